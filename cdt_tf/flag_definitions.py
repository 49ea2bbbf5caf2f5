"""Every flag of `python -m cdt_tf.main`, defined once, here, topic by topic: a function per topic
(data, model and objective, post-hoc, optimisation, run, hardware; data and model-and-objective in two
parts each, so no function grows past a screen), so that adding a flag touches one group.
`config.Config` turns the parsed flags into the frozen, validated run configuration (its checks follow
the same topics); `config.define_flags` is the public name of `define_flags`.
"""

from __future__ import annotations

import functools

from absl import flags

from cdt_tf import catalog, class_stats

# The headings of `python -m cdt_tf.main --help`, one per section of define_flags below: a heading
# covers the flag it names and every flag defined after it, up to the next heading's flag.
HELP_TOPICS = (
    ("Data", "dataset"),
    ("Model and objective", "model"),
    ("Post-hoc calibration and held-out selection", "holdout_per_class"),
    ("Optimisation (the paper's CIFAR recipe)", "epochs"),
    ("Run", "model_dir"),
    ("Hardware", "strategy"),
)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines every flag of `python -m cdt_tf.main` in flag_values, topic by topic (HELP_TOPICS), each in
    its own function below. Defaults are the paper's CIFAR recipe."""
    define = {
        kind: functools.partial(getattr(flags, f"DEFINE_{kind}"), flag_values=flag_values)
        for kind in ("enum", "string", "float", "integer", "bool", "list")
    }
    for define_topic in FLAG_TOPICS:
        define_topic(define)
    flags.mark_flags_as_required(["dataset", "model_dir"], flag_values=flag_values)


def _define_data_flags(define: dict) -> None:
    """Data: the dataset, its imbalanced subset, per-image augmentation (mixing follows)."""
    define["enum"]("dataset", None, catalog.DATASETS, "Dataset to train on.")
    define["string"](
        "data_dir",
        None,
        "cifar10/cifar100: the TFDS data_dir, or a folder with train/<class>/ and test/<class>/ "
        "(read as an image folder, classes in sorted name order). image_folder: that folder. "
        "tiny_imagenet: the tiny-imagenet-200 folder. inat2018: the folder holding train2018.json and "
        "val2018.json (file_name paths are relative to it), else the TFDS data_dir of i_naturalist2018.",
    )
    define["enum"](
        "bad_images",
        "error",
        catalog.BAD_IMAGES,
        "Image files that are empty or not an image (checked by their first bytes when the data is "
        "loaded, before training): error stops with one message counting and naming them; skip leaves "
        "them out of their split with one warning line, and the run records which.",
    )
    define["enum"](
        "imbalance",
        "none",
        class_stats.PROFILES,
        "Imbalance profile of the training subset: exp (long-tailed), step, or none.",
    )
    define["float"]("imbalance_ratio", 1.0, "rho = N_max / N_min >= 1.")
    define["integer"](
        "max_per_class", 0, "N_max, images of the largest class (0: the smallest class size available)."
    )
    define["integer"](
        "image_size",
        0,
        "image_folder: resize images to this square size (0: the first image's size). "
        "tiny_imagenet: 0 is 64. inat2018: the training and test crop size (0: 224).",
    )
    define["enum"](
        "augmentation",
        "auto",
        ("auto",) + catalog.AUGMENTATIONS,
        "Training augmentation. auto: crop_flip (pad H/8, random crop, flip) except none for digits. "
        "inat2018: crop_flip is the random-resized crop (8-100 % of the area) + flip; none is the test "
        "resize + centre crop.",
    )
    define["float"](
        "randaugment_magnitude",
        0.0,
        "RandAugment (keras.layers.RandAugment) per training image after pad-crop-flip, with this factor in "
        "(0, 1]: each op's strength is drawn in [0, factor] (RandAugment's M=9 of 30 is about 0.3). 0: off.",
    )
    define["integer"]("randaugment_ops", 2, "RandAugment: ops applied to each image (N).")
    define["integer"](
        "cutout",
        0,
        "Cutout: side of a square zeroed at a random position of each training image (after RandAugment), "
        "clipped at the borders. The CIFAR standard is 16. 0: off.",
    )


def _define_mixing_flags(define: dict) -> None:
    """Data, continued: MixUp/CutMix per training batch and how mixing ends (under the Data heading)."""
    define["float"](
        "mixup_alpha",
        0.0,
        "MixUp per training batch: lam ~ Beta(alpha, alpha), images and one-hot labels mixed with a "
        "permutation of the batch; the losses take the soft labels. 0: off.",
    )
    define["float"](
        "cutmix_alpha",
        0.0,
        "CutMix per training batch: lam ~ Beta(alpha, alpha) sets a box of the partner image pasted in, "
        "labels mixed by area. With --mixup_alpha too, each mixed batch picks one of the two (50/50). "
        "0: off.",
    )
    define["float"](
        "mix_prob", 1.0, "Probability that a batch is mixed (MixUp/CutMix); the others keep one-hot labels."
    )
    define["integer"](
        "mix_until_epoch",
        0,
        "MixUp/CutMix in epochs 1..N only; the later epochs train on unmixed batches (Bag of Tricks' "
        "fine-tuning after mixup). 0: every epoch.",
    )
    define["enum"](
        "mix_schedule",
        "step",
        catalog.MIX_SCHEDULES,
        "How mixing ends at --mix_until_epoch: step (--mix_prob until then, 0 after); ramp (--mix_prob "
        "until the 0-based epoch --mix_ramp_start, then linearly down to 0 at --mix_until_epoch: a "
        "mixup-to-plain ramp).",
    )
    define["integer"](
        "mix_ramp_start",
        0,
        "--mix_schedule=ramp: 0-based epoch from which the mixing probability falls; < --mix_until_epoch.",
    )


def _define_model_flags(define: dict) -> None:
    """Model and objective: the network and its last layer (the objective follows)."""
    define["enum"](
        "model",
        "auto",
        ("auto",) + catalog.MODEL_NAMES,
        "Network. auto: resnet32, or digits_convnet for digits, resnet18 for tiny_imagenet, resnet50 "
        "for inat2018.",
    )
    define["enum"](
        "classifier",
        "auto",
        ("auto",) + catalog.CLASSIFIERS,
        "Last layer: linear (Dense with bias) or cosine (normalised features and weights, no bias). "
        "auto: cosine for --loss=ldam (as its reference code), else linear.",
    )
    define["enum"](
        "conv_padding",
        "symmetric",
        catalog.CONV_PADDINGS,
        "How strided convolutions pad. symmetric: (k-1)/2 zeros each side, as PyTorch and the official "
        "TensorFlow ResNets, so a block's strided branch stays aligned with its shortcut. same: Keras "
        "'same' (0 before, 1 after on even sizes; one pixel off the shortcut), which runs started before "
        "this flag used and keep.",
    )


def _define_objective_flags(define: dict) -> None:
    """Model and objective, continued: the loss, its schedules, class weights and the sampler."""
    define["enum"](
        "loss",
        "ce",
        catalog.LOSSES,
        "Training objective: ce (ERM), cdt (class-dependent temperatures), reweight (weights N_c^-gamma), "
        "focal, cb (class-balanced, effective number), ldam (label-distribution-aware margins), "
        "la (logit-adjusted).",
    )
    define["float"](
        "gamma",
        0.0,
        "cdt: temperature exponent, a_c = (N_max / N_c)^gamma. "
        "reweight: weight exponent, w_c ~ N_c^-gamma. >= 0.",
    )
    define["enum"](
        "gamma_schedule",
        "constant",
        catalog.GAMMA_SCHEDULES,
        "How gamma (cdt, reweight) moves during training: constant; step (0 before --gamma_epoch, then "
        "gamma: the paper's iNaturalist recipe); linear (0 at epoch 0 rising to gamma at --gamma_epoch).",
    )
    define["integer"]("gamma_epoch", 0, "0-based epoch of --gamma_schedule's switch or end of ramp.")
    define["float"](
        "prior_tau",
        0.0,
        "Every --loss: add tau * log pi_c (pi_c = N_c / N, the training prior) to the training logits, "
        "after cdt's temperatures (z_c / a_c + tau log pi_c): Menon et al.'s logit-adjusted loss; 1 with "
        "ce is Balanced Softmax. Prediction stays the argmax of the plain logits. >= 0; 0: off.",
    )
    define["float"]("focal_gamma", 1.0, "focal: the focusing exponent of (1 - p_y)^focal_gamma.")
    define["enum"](
        "cb_loss", "softmax", ("softmax", "focal"), "cb: weight softmax cross-entropy or the focal loss."
    )
    define["float"](
        "cb_beta", 0.9999, "cb and DRW: beta of the effective number (1 - beta^N_c) / (1 - beta)."
    )
    define["float"]("ldam_max_margin", 0.5, "ldam: the largest margin (of the smallest class).")
    define["float"]("ldam_scale", 30.0, "ldam: scale s of the cosine logits.")
    define["float"]("la_tau", 1.0, "la: the logit adjustment tau * log prior added in training.")
    define["integer"](
        "drw_epoch",
        0,
        "Deferred re-weighting: 0-based epoch from which class-balanced (effective-number, --cb_beta) "
        "weights are switched on (LDAM-DRW uses 160). 0: off.",
    )
    define["enum"](
        "class_weight_reduction",
        "weights",
        catalog.WEIGHT_REDUCTIONS,
        "Reduction of class-weighted losses: weights (sum w l / sum w, the PyTorch reference code) or "
        "batch_size (sum w l / B, Keras's class_weight).",
    )
    define["enum"](
        "sampler",
        "instance",
        catalog.SAMPLERS,
        "instance: shuffle the training subset. class_balanced: each example's class drawn uniformly, "
        "then an image of that class (re-sampling).",
    )
    define["float"](
        "contrastive_weight",
        0.0,
        "Balanced contrastive learning (BCL, Zhu et al. 2022): add this weight times a class-averaged "
        "supervised-contrastive loss on a projection of the features, with the classifier's class "
        "weights as class centers, to --loss. Each batch then holds two augmented views of each image "
        "(twice the images a step). The heads are dropped after training. Not with MixUp/CutMix, "
        "SAM or --strategy=multi_worker. 0: off.",
    )
    define["float"](
        "contrastive_temperature", 0.1, "--contrastive_weight: the temperature T of the contrastive loss."
    )
    define["integer"](
        "contrastive_dim", 128, "--contrastive_weight: the width of the projections (both MLP heads)."
    )


def _define_post_hoc_flags(define: dict) -> None:
    """Post-hoc calibration, held-out selection and the second stage."""
    define["integer"](
        "holdout_per_class",
        0,
        "Hold out K training images per class (from the imbalanced subset) as a balanced validation "
        "split to select post-hoc tau on (the paper's Table 9). 0: select on the test set, labelled so.",
    )
    define["integer"](
        "val_per_class",
        0,
        "A balanced validation split of N images per class, evaluated at the end of training (results.json "
        "'validation') and used to select post-hoc tau. A class's N images come from the training pool "
        "images outside the run's subset when it has N to spare, else out of its own subset (then removed "
        "from training); subset.json records which. 0: off. Exclusive with --holdout_per_class.",
    )
    define["string"](
        "tau_from",
        None,
        "A finished --holdout_per_class run directory: use its held-out-selected post-hoc taus here "
        "(the second step of the Table 9 protocol: retrain on the full subset).",
    )
    define["enum"](
        "second_stage",
        "none",
        ("none",) + catalog.SECOND_STAGES,
        "After training, retrain the classifier of the trained network (python -m "
        "cdt_tf.retrain_classifier): crt (class-balanced batches), crt_las (with label-aware "
        "smoothing, --smooth_head/--smooth_tail), *_bn (on batch-norm statistics re-estimated on "
        "class-balanced batches), *_shift (MiSLAS's stage 2: batch norms in training mode on "
        "class-balanced batches through the network, --shift_lr_factor), wb (weight balancing's stage 2: "
        "class-balanced loss, --wb_weight_decay, MaxNorm at --wb_threshold). Recorded in results.json "
        "post_hoc.<name>; `python -m cdt_tf.export --classifier=<name>` serves it. none: off.",
    )
    define["float"]("smooth_head", 0.3, "--second_stage=crt_las*: label smoothing of the largest class.")
    define["float"]("smooth_tail", 0.0, "--second_stage=crt_las*: label smoothing of the smallest class.")
    define["float"](
        "shift_lr_factor",
        0.2,
        "--second_stage=*_shift: the classifier's learning rate over the logit scale's 0.1 (MiSLAS's "
        "lr_factor: 0.2 for CIFAR-100-LT rho=100, 0.1 for rho=50/10, 0.05 for ImageNet-LT), > 0.",
    )
    define["bool"](
        "shift_affine",
        False,
        "--second_stage=*_shift: also learn the batch norms' gamma and beta (beyond MiSLAS, which keeps "
        "them; gradients then run through the network).",
    )
    define["float"](
        "wb_weight_decay",
        0.1,
        "--second_stage=wb: the classifier's weight decay (Alshammari et al.: 0.1), >= 0.",
    )
    define["float"](
        "wb_threshold",
        0.1,
        "--second_stage=wb: MaxNorm radius min_c ||w_c|| + t (max_c - min_c) of the trained classifier's "
        "norms, t in [0, 1] (theirs: 0.1).",
    )


def _define_optimisation_flags(define: dict) -> None:
    """Optimisation: the paper's CIFAR recipe by default."""
    define["integer"]("epochs", 200, "Training epochs.")
    define["integer"]("batch_size", 128, "Global batch size (summed over replicas).")
    define["float"]("learning_rate", 0.1, "Peak learning rate, reached after the warm-up.")
    define["float"]("momentum", 0.9, "SGD momentum.")
    define["float"]("weight_decay", 2e-4, "Coupled (PyTorch-style) L2 weight decay.")
    define["float"](
        "sam_rho",
        0.0,
        "Sharpness-aware minimisation (SAM, Foret et al. 2021): each step takes the gradient at the "
        "weights moved by rho * g / ||g|| (g the batch gradient), then SGD updates the unmoved weights. "
        "Two forward and backward passes per step: about twice the training time. 0.05 is SAM's usual "
        "rho. 0: off.",
    )
    define["enum"](
        "sam_classes",
        "all",
        catalog.SAM_CLASSES,
        "With --sam_rho: whose loss SAM flattens. all: the whole batch's (SAM). tail: the loss of the "
        "tail-class examples (fewer than --sam_tail_threshold training images) only; the other examples "
        "take the plain gradient (ImbSAM, Zhou et al. 2023).",
    )
    define["integer"](
        "sam_tail_threshold",
        100,
        "--sam_classes=tail: a class with fewer training images than this is a tail class (100: about the "
        "medium and few-shot classes; the ImbSAM reference code's --eta defaults to 20, the few-shot ones).",
    )
    define["float"](
        "max_norm",
        0.0,
        "Weight balancing (Alshammari et al. 2022): after every step, rescale each class's weight vector "
        "of the linear classifier to norm <= this value (keras.constraints.MaxNorm, axis 0); they pair it "
        "with a tuned --weight_decay. Linear classifier only. 0: off.",
    )
    define["enum"](
        "lr_schedule",
        "step",
        catalog.LR_SCHEDULES,
        "Learning-rate schedule. step: per-epoch linear warm-up over --warmup_epochs, then the base rate "
        "times each --decay_multipliers from its --decay_epochs on (the paper's recipe). cosine: per-step "
        "linear warm-up over --warmup_epochs, then cosine decay to 0 at the end of --epochs (ignores "
        "--decay_epochs and --decay_multipliers).",
    )
    define["integer"]("warmup_epochs", 5, "Epochs of linear learning-rate warm-up.")
    define["list"]("decay_epochs", ["160", "180"], "0-based epochs at which the decays start.")
    define["list"](
        "decay_multipliers", ["0.01", "0.0001"], "Learning-rate multiplier from each decay epoch on."
    )
    define["integer"]("steps_per_epoch", 0, "Optimizer steps per epoch (0: one pass over the subset).")
    define["integer"](
        "eval_per_class",
        0,
        "Bound every evaluation to K images per class (seeded): the test split (per-epoch evaluation, "
        "results, post-hoc) and the training-subset pass of post-hoc (NCM centres). 0: all. For smoke "
        "runs with --steps_per_epoch (e.g. --eval_per_class=2); results.json then says so.",
    )


def _define_run_flags(define: dict) -> None:
    """Run: the run directory, seed, evaluation and checkpoint cadence."""
    define["string"]("model_dir", None, "Run directory: config, checkpoints, logs, results.")
    define["integer"]("seed", 0, "Seeds the subset, Keras, NumPy, TensorFlow and every shuffle.")
    define["bool"]("deterministic", False, "Use deterministic TensorFlow ops (slower).")
    define["integer"]("eval_every", 10, "Epochs between per-class test evaluations (TensorBoard).")
    define["integer"]("checkpoint_every", 10, "Epochs between kept weight checkpoints.")
    define["integer"](
        "stats_every",
        0,
        "Epochs between per-class training statistics for TensorBoard (logs/stats: train/test accuracy, "
        "classifier norms, train/test feature-mean distance; Fig. 7). 0: off.",
    )


def _define_hardware_flags(define: dict) -> None:
    """Hardware: distribution strategy, precision, profiling."""
    define["enum"](
        "strategy",
        "auto",
        catalog.STRATEGIES,
        "tf.distribute strategy. auto: MirroredStrategy when more than one GPU is visible, else one device. "
        "mirrored: all visible GPUs (or the CPU). one_device: the first GPU (or the CPU). multi_worker: "
        "MultiWorkerMirroredStrategy across the machines listed in the TF_CONFIG environment variable; run "
        "the same command on every machine, only the chief writes --model_dir (BUILD.md). "
        "--batch_size is global (split over the replicas).",
    )
    define["enum"](
        "precision",
        "auto",
        catalog.PRECISIONS,
        "Compute precision. auto (default): mixed_float16 on GPUs of compute capability >= 7.0, "
        "mixed_bfloat16 on CPUs with native bfloat16 (AVX512-BF16 or AMX), float32 elsewhere (bf16 costs "
        "no accuracy on the CIFAR recipe: BENCHMARKS.md). Logits, temperatures and losses stay float32. "
        "A resumed run keeps the precision it started with (config.json).",
    )
    define["bool"](
        "mixed_precision",
        False,
        "Deprecated: --precision=auto without the float32 fallback (mixed_float16 on GPUs, "
        "mixed_bfloat16 on CPUs with bfloat16 arithmetic). Kept so that older commands still run.",
    )
    define["string"](
        "profile_batch",
        "",
        "Write a TensorBoard profile of training steps a..b (1-based, e.g. 10,20) to logs/ "
        "(view with tensorboard-plugin-profile). Empty: off.",
    )


# define_flags calls these in this order: the order of HELP_TOPICS, and of --help.
FLAG_TOPICS = (
    _define_data_flags,
    _define_mixing_flags,
    _define_model_flags,
    _define_objective_flags,
    _define_post_hoc_flags,
    _define_optimisation_flags,
    _define_run_flags,
    _define_hardware_flags,
)
