"""``vito-fast export``: the trained trunk's weights from a run's checkpoint.

    vito-fast export runs/demo -o encoder.pth                  # torchvision names (default)
    python -c "import torch, torchvision; m = torchvision.models.resnet18(); \\
               print(m.load_state_dict(torch.load('encoder.pth'), strict=False))"   # missing: fc only

--format torchvision: a flat state dict of the ResNet trunk (conv1 … layer4) that
``torchvision.models.<arch>().load_state_dict(..., strict=False)`` takes, leaving only ``fc``
missing (and stages after the last tapped one, if the run tapped fewer). --format vito: the whole
encoder (trunk, attention pools, projectors) plus the config, for ``VITO``-side evaluation.
--encoder target exports the EMA target instead of the online network.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from vito_fast.cli._args import EXIT_FAILURE


def export_state(state: dict, fmt: str = "torchvision", encoder: str = "online") -> dict:
    """The weights to write, from a loaded checkpoint dict."""
    from vito_fast.train.run_folder import encoder_weights

    source = encoder_weights(state, encoder)
    if fmt == "torchvision":
        return {k[len("trunk."):]: v for k, v in source.items() if k.startswith("trunk.")}
    return {"format": "vito-encoder", "config": state["config"], "step": state["step"], "encoder": source}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="vito-fast export",
                                     description="Export a run's trained trunk as torchvision-loadable weights.")
    parser.add_argument("run", metavar="RUN", help="run directory (or a checkpoint .pt file)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the weights")
    parser.add_argument("--format", choices=("torchvision", "vito"), default="torchvision")
    parser.add_argument("--encoder", choices=("online", "target"), default="online")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))

    import torch

    from vito_fast.train.checkpoint import load_checkpoint
    from vito_fast.model.vito import STAGES

    try:
        state = load_checkpoint(args.run)
    except (FileNotFoundError, ValueError) as error:
        print(f"vito-fast export: {error}", file=sys.stderr)
        return EXIT_FAILURE
    weights = export_state(state, args.format, args.encoder)
    torch.save(weights, args.output)
    arch, stages = state["config"]["model"]["arch"], state["config"]["model"]["stages"]
    print(f"vito-fast export: {args.encoder} {arch} at step {state['step']} → {args.output} ({args.format})")
    if args.format == "torchvision":
        absent = STAGES[max(STAGES.index(s) for s in stages) + 1:]
        missing = "fc" + "".join(f", {s}" for s in absent)
        width = int(state["config"]["model"].get("width", 64))
        network = f"torchvision.models.{arch}()" if width == 64 else \
            f"vito_fast.model.vito.build_resnet({arch!r}, width={width})"  # a narrower trunk than torchvision's
        print(f"  load with {network}.load_state_dict(torch.load({args.output!r}), strict=False): missing {missing}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
