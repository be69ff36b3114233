"""Evaluation of frozen features: kNN, linear probe, label propagation, robustness, attention maps.

May import train (a run's config), curate, prepare, synthetic, model, data and the layers below;
never demo or cli.
"""
from vito_fast._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        # labelled images and frozen features
        "LabelledImages": ".features",
        "load_image_folder": ".features",
        "load_manifest_frames": ".features",
        "split_by_group": ".features",
        "group_folds": ".features",
        "extract_features": ".features",
        "extract_feature_maps": ".features",
        # encoders to evaluate
        "EvalEncoder": ".encoder",
        "load_encoder": ".encoder",
        # probes
        "knn_predict": ".knn",
        "knn_accuracy": ".knn",
        "LinearProbe": ".linear",
        "train_linear_probe": ".linear",
        "linear_probe_accuracy": ".linear",
        # video object segmentation by label propagation
        "propagate_labels": ".propagate",
        "region_similarity": ".propagate",
        "load_davis_sequences": ".propagate",
        # corruption robustness
        "corrupt": ".robustness",
        "robustness_evaluation": ".robustness",
        # attention maps
        "overlay_attention": ".viz",
        "attention_panel": ".viz",
        "attention_mask_iou": ".viz",
        "attention_mass_on_masks": ".viz",
        "centred_gaussian_attention": ".viz",
    },
)
