"""``vito-fast export``: the trained trunk's weights from a run's checkpoint.

    vito-fast export runs/demo -o encoder.pth                  # torchvision names for a ResNet, timm's for a ViT
    python -c "import torch, torchvision; m = torchvision.models.resnet18(); \\
               print(m.load_state_dict(torch.load('encoder.pth'), strict=False))"   # missing: fc only
    python -c "import torch, timm; m = timm.create_model('vit_small_patch16_224', num_classes=0); \\
               m.load_state_dict(torch.load('encoder.pth'))"                          # strict: every key

--format torchvision (a ResNet run's default): a flat state dict of the ResNet trunk (conv1 … layer4)
that ``torchvision.models.<arch>().load_state_dict(..., strict=False)`` takes, leaving only ``fc``
missing (and stages after the last tapped one, if the run tapped fewer). --format timm (a ViT run's
default): timm's state dict of the ViT, which ``timm.create_model(arch, num_classes=0, **arguments)``
loads strictly (the arguments the export prints: none for the presets; ``num_classes=0`` because the
classifier head is not trained; blocks after the last tapped one are missing when the run tapped
fewer). --format vito: the whole encoder (trunk, attention pools, projectors) plus the config, for
``VITO``-side evaluation. --encoder target exports the EMA target instead of the online network.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from vito_fast.cli._args import EXIT_FAILURE

FORMATS = ("auto", "torchvision", "timm", "vito")


def export_format(state: dict, fmt: str = "auto") -> str:
    """The format ``auto`` stands for (timm for a ViT run, torchvision for a ResNet), or ValueError for a
    format that does not fit the run's trunk."""
    from vito_fast.model.vit import is_vit_arch

    arch = state["config"]["model"]["arch"]
    native = "timm" if is_vit_arch(arch) else "torchvision"
    if fmt == "auto":
        return native
    if fmt in ("torchvision", "timm") and fmt != native:
        raise ValueError(f"--format {fmt}: the run trained a {arch}, whose weights export as --format {native}")
    return fmt


def export_state(state: dict, fmt: str = "auto", encoder: str = "online") -> dict:
    """The weights to write, from a loaded checkpoint dict."""
    from vito_fast.model.vit import timm_state_dict
    from vito_fast.train.run_folder import encoder_weights

    fmt = export_format(state, fmt)
    source = encoder_weights(state, encoder)
    if fmt in ("torchvision", "timm"):
        trunk = {k[len("trunk."):]: v for k, v in source.items() if k.startswith("trunk.")}
        return timm_state_dict(trunk) if fmt == "timm" else trunk
    return {"format": "vito-encoder", "config": state["config"], "step": state["step"], "encoder": source}


def how_to_load(state: dict, fmt: str, output: str, weights: dict) -> str:
    """The line that says how the exported file loads, and what it lacks."""
    model = state["config"]["model"]
    arch, stages = model["arch"], model["stages"]
    if fmt == "timm":
        from vito_fast.model.vit import require_timm, timm_arguments
        from vito_fast.train.config import from_dict

        arguments = timm_arguments(from_dict({"model": model}).model.vit)
        wanted = require_timm().create_model(arch, pretrained=False, **arguments).state_dict()
        missing = sorted({key.split(".")[0] + (f".{key.split('.')[1]}" if key.startswith("blocks.") else "")
                          for key in wanted if key not in weights})
        shown = ", ".join(f"{key}={value!r}" for key, value in arguments.items())
        return (f"  load with timm.create_model({arch!r}, {shown}).load_state_dict(torch.load({output!r})"
                + (f", strict=False): missing {', '.join(missing)} (after the last tapped block)" if missing
                   else "): strict, every key"))
    from vito_fast.model.vito import STAGES

    absent = STAGES[max(STAGES.index(s) for s in stages) + 1:]
    missing = "fc" + "".join(f", {s}" for s in absent)
    width = int(model.get("width", 64))
    network = f"torchvision.models.{arch}()" if width == 64 else \
        f"vito_fast.model.vito.build_resnet({arch!r}, width={width})"  # a narrower trunk than torchvision's
    return f"  load with {network}.load_state_dict(torch.load({output!r}), strict=False): missing {missing}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="vito-fast export",
                                     description="Export a run's trained trunk as torchvision- or timm-loadable weights.")
    parser.add_argument("run", metavar="RUN", help="run directory (or a checkpoint .pt file)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the weights")
    parser.add_argument("--format", choices=FORMATS, default="auto",
                        help="auto (default): torchvision for a ResNet run, timm for a ViT run; vito: the whole encoder")
    parser.add_argument("--encoder", choices=("online", "target"), default="online")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))

    import torch

    from vito_fast.train.checkpoint import load_checkpoint

    try:
        state = load_checkpoint(args.run)
        fmt = export_format(state, args.format)
    except (FileNotFoundError, ValueError) as error:
        print(f"vito-fast export: {error}", file=sys.stderr)
        return EXIT_FAILURE
    weights = export_state(state, fmt, args.encoder)
    torch.save(weights, args.output)
    arch = state["config"]["model"]["arch"]
    print(f"vito-fast export: {args.encoder} {arch} at step {state['step']} → {args.output} ({fmt})")
    if fmt != "vito":
        print(how_to_load(state, fmt, args.output, weights))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
