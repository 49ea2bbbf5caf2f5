"""The vocabulary of cdt_tf: every name a flag can take, and the constants several modules share.

Pure Python, free of TensorFlow, so that `config` refuses a bad flag at once. Each name list is
written here only: the module that implements the names imports its list from here and builds
its registry over it (losses, models, distribution, datasets), so no copy can drift.
"""

from __future__ import annotations

# Data sources (cdt_tf.datasets) and the ones used as they are unless --imbalance asks for a subset.
DATASETS = ("cifar10", "cifar100", "digits", "image_folder", "tiny_imagenet", "inat2018")
AS_IS_DATASETS = ("image_folder", "inat2018")
# What to do with an image file that is empty or not an image (--bad_images).
BAD_IMAGES = ("error", "skip")
# --model=auto per dataset (resnet32 for the others).
AUTO_MODELS = {"digits": "digits_convnet", "tiny_imagenet": "resnet18", "inat2018": "resnet50"}

# Networks (cdt_tf.models) and their last layers.
CIFAR_RESNET_DEPTHS = (20, 32, 44, 56, 110)
MODEL_NAMES = tuple(f"resnet{d}" for d in CIFAR_RESNET_DEPTHS) + ("resnet18", "resnet50", "digits_convnet")
CLASSIFIERS = ("linear", "cosine")

# Objectives (cdt_tf.losses) and how class-weighted ones reduce a batch.
LOSSES = ("ce", "cdt", "reweight", "focal", "cb", "ldam", "la")
WEIGHT_REDUCTIONS = ("weights", "batch_size")
GAMMA_SCHEDULES = ("constant", "step", "linear")
# How the MixUp/CutMix probability ends (--mix_schedule; schedules.mix_prob_at): step (off from
# --mix_until_epoch on) or ramp (down linearly from --mix_ramp_start to 0 at --mix_until_epoch).
MIX_SCHEDULES = ("step", "ramp")
# Learning-rate schedules (cdt_tf.schedules): step (warm-up, then x multiplier at each decay epoch; the
# paper's recipe) or cosine (warm-up, then cosine decay to 0 at the last step).
LR_SCHEDULES = ("step", "cosine")
# How strided convolutions pad (network_layers.conv_bn): symmetric (PyTorch, official TF ResNets)
# or Keras "same".
CONV_PADDINGS = ("symmetric", "same")

# Whose loss sharpness-aware minimisation flattens (cdt_tf.sam; --sam_classes): every class (SAM) or the
# tail classes only (ImbSAM).
SAM_CLASSES = ("all", "tail")

# The calibrations cdt_tf.export can put in the served graph (cdt_tf.calibration.CALIBRATION_LAYERS).
CALIBRATIONS = ("nc_tau", "logit_adjustment")
# Second stages on a finished run's frozen network (cdt_tf.retrain_classifier; main's --second_stage):
# cRT, with label-aware smoothing (_las), on re-estimated batch-norm statistics (_bn), MiSLAS's stage 2
# with shift learning on batch normalization (_shift, cdt_tf.shift_learning), weight balancing's
# stage 2 (wb, cdt_tf.weight_balancing). Each is also the key of its results.json post_hoc entry and
# a cdt_tf.export --classifier.
SECOND_STAGES = ("crt", "crt_las", "crt_bn", "crt_las_bn", "crt_shift", "crt_las_shift", "wb")
# How `python -m cdt_tf.retrain_classifier --method` trains the new classifier (with SECOND_STAGES'
# smoothing and batch-norm suffixes): cRT, shift learning, weight balancing.
RETRAIN_METHODS = ("crt", "shift", "wb")


def retrain_method(stage: str) -> str:
    """The RETRAIN_METHODS entry that trains a SECOND_STAGES name: wb, shift (the *_shift ones) or crt."""
    return "wb" if stage == "wb" else "shift" if stage.endswith("_shift") else "crt"


# Input pipeline (cdt_tf.input_pipeline).
SAMPLERS = ("instance", "class_balanced")
AUGMENTATIONS = ("crop_flip", "none")

# Hardware (cdt_tf.distribution).
STRATEGIES = ("auto", "mirrored", "one_device", "multi_worker")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")

# Batch size of every inference pass (evaluation, features, analysis): large enough to keep the
# cores busy, small enough for ResNet-50 at 224 px in a few GB.
EVAL_BATCH_SIZE = 500

# ImageNet's channel statistics on [0, 1] pixels: the normalisation of Tiny-ImageNet, iNaturalist
# and the ImageNet ResNets' defaults.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
