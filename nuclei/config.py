"""One typed configuration per stage; the same fields are the Prefect flow parameters."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nuclei.core.normalize import Normalization

# Version knobs in one place.
ONNX_OPSET = 17  # tf2onnx 1.17 supports <= 18
STORE_FORMAT_VERSION = 1  # bump when the store layout changes; readers refuse other versions
MODEL_FORMAT_VERSION = 1
DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
DEFAULT_TILE_SIZE = 1024
# Larger images must be asked for: a tiny file can claim a huge size (a decompression bomb).
DEFAULT_MAX_PIXELS = 2**28  # 268 Mpixel, e.g. 16384 x 16384
# Slides above this are cut into blocks: a 64 Mpx window and its probabilities would need about 1.5 GB.
DEFAULT_SLIDE_PIXELS = 2**26
DEFAULT_MAX_SLIDE_PIXELS = 2**34  # 17 Gpx, 131k x 131k: above the largest whole-slide scans
# A slide's declared pixels must be backed by its bytes: refused past this many declared bytes per stored byte.
# Measured on the test fields (BBBC039) as 256-px tiled TIFFs: 16-bit zlib/zstd/LZW 2x, 8-bit JPEG 10x, an
# H&E-like RGB JPEG 28x, a 16-bit field in 1/16 of a zero background 32x, all-white RGB JPEG tiles 118-185x,
# all-zero tiles LZW 211x, zlib 830x, zstd 4200x (256 px) to 20000x (1024 px). 5000x passes any slide with
# content (1/1000 of its area in content at 2x stays under 2000x) and refuses a header over empty tiles
# (100000 x 100000 px of uint8 in 0.46 MB is 21700x) or an OME-Zarr whose chunks are missing.
DEFAULT_MAX_COMPRESSION = 5000.0
DEFAULT_BLOCK_SIZE = 4096  # about 1 GB per block task; the shipped model's context, 128 px a side, adds 13%


class TrainConfig(BaseModel):
    """How to train: data, architecture, optimisation. Written into the model directory as config.json."""

    model_config = ConfigDict(extra="forbid")

    data_dir: str | list[str] = Field(description="dataset folder (kaggle, seed or paired layout), or several: "
                                      "each is split 80:20 on its own and sampled so none drowns the others")
    out_dir: str = Field("models", description="the model directory is created as OUT_DIR/NAME")
    name: str = Field("unet", pattern=r"^[A-Za-z0-9._-]+$", description="model directory name")
    architecture: Literal["unet", "mobilenet_unet"] = "unet"
    depth: int = Field(4, ge=2, le=6, description="U-Net levels; inputs are padded to 2**depth")
    base_filters: int = Field(16, ge=4, le=128, description="filters at the first level, doubled per level")
    instance_channel: bool = Field(True, description="also predict nucleus cores, to split touching nuclei")
    encoder_weights: str | None = Field(None, description="local .weights.h5 for the MobileNetV2 encoder")
    init_from: str | None = Field(None, description="fine-tune: start from this model directory's weights")
    contact_weight: float = Field(0.0, ge=0.0, description="extra loss weight on pixels where two nuclei touch or "
                                  "nearly do (the U-Net paper's border weights): keeps touching nuclei apart")
    epochs: int = Field(100, ge=1, le=10000)
    batch_size: int = Field(16, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1, description="default: one crop per training image")
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 12345
    patience: int = Field(10, ge=1, description="early stopping on val_loss, best weights restored")
    precision: Literal["float32", "mixed_bfloat16"] = Field("float32", description="training arithmetic: "
                                                            "mixed_bfloat16 takes 0.56x the time of float32 a "
                                                            "step on CPUs with AVX-512 BF16 "
                                                            "(benchmarks/bf16_training.py); the saved and exported "
                                                            "model is float32 either way")
    minutes: float | None = Field(None, gt=0.0, description="stop fitting after this many minutes (best weights "
                                  "kept): a time budget, as a fine-tune has")
    learning_rate: float = Field(1e-3, gt=0.0)
    crop_size: int = Field(256, ge=16, description="random training crops, a multiple of the pad multiple")
    augment: bool = Field(True, description="flips, 90-degree rotations, scale, intensity, blur and noise changes")
    scale_range: tuple[float, float] = Field((1.0, 1.0), description="random zoom of training crops (log-uniform), "
                                             "so nuclei of other sizes than the data's are seen: e.g. [0.5, 2.0]")
    normalization: Normalization = Field(Normalization(kind="foreground"),
                                         description="per-image intensity scaling, the same in every consumer")
    nucleus_brightness: float = Field(0.5, ge=0.0, le=1.0, description="share of training crops whose nuclei "
                                      "each get a brightness of their own (5-100%, a few pushed to saturation), "
                                      "so dim nuclei beside bright ones are found")
    stain_jitter: float = Field(0.0, ge=0.0, le=0.5, description="colour brightfield crops: the haematoxylin, "
                                "eosin and DAB densities each scaled and shifted by up to this (HED "
                                "augmentation), so other labs' staining is seen; 0.05 light, 0.2 strong")
    microscope: float = Field(0.0, ge=0.0, le=1.0, description="share of training crops given another "
                              "microscope's faults on their raw pixels before normalising: uneven illumination "
                              "(gradients, vignetting, glow), saturated nuclei, debris specks (never labelled), "
                              "mosaic seams, defocus; validation then also scores each image with such faults")
    field_joins: float = Field(0.0, ge=0.0, le=1.0, description="share of the `microscope` crops joined along a "
                               "straight line to a window of another field of the same data set, as a stitched "
                               "mosaic abuts fields: nuclei cut by the seam, other content beyond it")
    validation_zooms: list[float] = Field([1.0], min_length=1, description="validation crops at each of these "
                                          "zooms (fixed, seeded): early stopping then weighs the nucleus sizes the "
                                          "scale_range trains for, e.g. [0.5, 1.0]; default: the data's own scale")
    include: list[str] = Field(default_factory=list, description="train and validate only on images of these "
                               "groups (DATASET:FIELD=REGEX, as held_out), e.g. a stained-tissue specialist: "
                               "'dsb2018-dev:category=^color_bright$'; empty: every image")
    held_out: list[str] = Field(default_factory=list, description="whole groups never trained on, scored apart "
                                "(what a new lab's images would get): DATASET:FIELD=REGEX on manifest.csv fields, "
                                "id or category, e.g. 'bbbc039:id=_[A-C]\\d\\d_'")
    held_out_in_validation: bool = Field(True, description="keep held-out groups' images that the 80:20 split "
                                         "put in validation there (False: they leave validation too, so early "
                                         "stopping and the thresholds see only the images this model is for; "
                                         "they are still scored with their group)")
    balance_categories: bool = Field(False, description="sample rare image types (grey/colour, dark/bright) "
                                     "more often: probability ~ 1/sqrt(images of the type)")
    dataset_weights: dict[str, float] = Field(default_factory=dict, description="multiply a data set's share of "
                                              "the training crops (data set folder name -> factor, default 1), "
                                              "e.g. {'dsb2018-dev': 2.0} for a stage that favours one set")
    max_images: int | None = Field(None, ge=2, description="use only the first N images (quick runs)")
    on_error: Literal["raise", "skip"] = "raise"
    quantize_int8: bool = Field(False, description="also write model.int8.onnx, kept if as good on validation")
    min_ap50: float = Field(0.05, ge=0.0, le=1.0, description="the run ends Failed when validation AP@0.5 is "
                            "below this: a model that finds no nuclei is not a finished model (0: never)")

    @model_validator(mode="after")
    def _crop_fits_network(self) -> TrainConfig:
        if self.crop_size % self.pad_multiple:
            raise ValueError(f"crop_size {self.crop_size} must be a multiple of {self.pad_multiple}")
        low, high = self.scale_range
        if not 0.1 <= low <= high <= 10.0:
            raise ValueError(f"scale_range {self.scale_range} must be (low, high) with 0.1 <= low <= high <= 10")
        for dataset, factor in self.dataset_weights.items():
            if not factor > 0:
                raise ValueError(f"dataset_weights[{dataset!r}] = {factor} must be > 0")
        for rule in [*self.held_out, *self.include]:
            if ":" not in rule or "=" not in rule.partition(":")[2]:
                raise ValueError(f"held_out rule {rule!r} must read DATASET:FIELD=REGEX")
        return self

    @property
    def data_dirs(self) -> list[str]:
        return [self.data_dir] if isinstance(self.data_dir, str) else list(self.data_dir)

    @property
    def pad_multiple(self) -> int:
        """Input height and width must be multiples of this (one per pooling level)."""
        return 32 if self.architecture == "mobilenet_unet" else 2**self.depth

    @property
    def channels(self) -> list[str]:
        return ["foreground", "core"] if self.instance_channel else ["foreground"]


class SegmentConfig(BaseModel):
    """How to segment: inputs, store, model, where to run. The `segment` flow's parameters, the CLI's options
    (derived from these fields), the plan and every Dask task use this one type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: list[str] = Field(min_length=1, description="folders (recursive), globs or files; local or fsspec URLs")
    store: str = Field(min_length=1, description="Zarr store path or URL (created if missing)")
    model: str | None = Field(None, description="model directory (default: $NUCLEI_MODEL, else the shipped model)")
    stained_model: str = Field("default", min_length=1, description="model for colour brightfield images "
                               "(H&E-like stained tissue): a model directory, 'none' (one model for every image), "
                               "or 'default': the shipped one when the default model is in use")
    dask_address: str | None = Field(None, description="existing Dask scheduler (default: $NUCLEI_DASK_ADDRESS, "
                                     "else none: this process, a thread per core)")
    n_workers: int | None = Field(None, ge=1, le=1024, description="run on a LocalCluster of this many worker "
                                  "processes (default: none, this process with a thread per core)")
    images_per_task: int = Field(32, ge=1, description="images one task (a thread's or Dask worker's batch) "
                                 "segments")
    overwrite: bool = Field(False, description="segment again even if the store holds the image unchanged")
    tile_size: int = Field(DEFAULT_TILE_SIZE, ge=64, le=16384, description="larger images run as overlapping "
                           "tiles of this size (a multiple of the model's pad multiple)")
    providers: list[str] = Field(list(DEFAULT_PROVIDERS), min_length=1, description="ONNX Runtime execution "
                                 "providers in order of preference (CPU is always the last resort)")
    int8: bool = Field(True, description="on CPU, run the model's validated int8 variant when it ships one")
    diameter: Annotated[float, Field(ge=2.0, le=1000.0)] | Literal["auto"] | None = Field(
        None, description="typical nucleus diameter in pixels: images are rescaled so nuclei match the model's "
        "training scale; 'auto': measured per image, rescaled when over 2.5x off (e.g. 63x images)")
    min_diameter: float | None = Field(None, gt=0.0, le=1000.0, description="drop objects smaller than a disc this "
                                       "many pixels across (debris, specks; e.g. a third of the smallest nuclei "
                                       "here) (default: the model's minimum size)")
    drop_debris: bool = Field(True, description="drop small bright specks alone on the background (under a "
                              "tenth of the image's typical nucleus area, brighter than its typical nucleus, over "
                              "a fifth of a nucleus from any other, not cut by the edge; fluorescence only)")
    tta: bool = Field(False, description="test-time flips: average the model over the image and its 3 mirror "
                      "images (about 4x the inference time)")
    channel: str | None = Field(None, description="the nuclear channel of multi-channel images, by index or name "
                                "(default: one channel as is, RGB as luminance, anything else is refused)")
    z: str | None = Field(None, pattern=r"^(max|\d+)$", description="z-stacks: 'max' (maximum projection) or a "
                          "plane index")
    pixel_size: float | None = Field(None, gt=0.0, le=1000.0, description="pixel size in micrometres, where the "
                                     "files do not say (OME-TIFF and TIFF resolution tags are read)")
    threads: int = Field(0, ge=0, description="ONNX Runtime threads per session (0: the cores a worker has)")
    batch_size: int = Field(8, ge=1, le=256, description="same-sized images per model run")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="refuse larger images (decompression bombs)")
    slide_pixels: int = Field(DEFAULT_SLIDE_PIXELS, ge=1, description="whole slides: images read a window at a "
                              "time (tiled TIFF, OME-Zarr) above this many pixels run as blocks, each a task, and "
                              "never whole in one process (max_pixels does not apply to them)")
    max_slide_pixels: int = Field(DEFAULT_MAX_SLIDE_PIXELS, ge=1, description="whole slides: refuse larger ones "
                                  "before any work (a header can declare any size: 100000 x 100000 px of zeros "
                                  "fit in 0.6 MB); raise it for a genuine slide that large")
    max_compression: float = Field(DEFAULT_MAX_COMPRESSION, ge=1.0, description="whole slides: refuse, before "
                                   "any work, one whose declared pixels are more than this many times the bytes "
                                   "it stores (real slides compress 2-200x; a header over empty tiles or missing "
                                   "chunks, thousands of times); raise it for a genuine slide that empty")
    block_size: int = Field(DEFAULT_BLOCK_SIZE, ge=64, le=32768, description="whole slides: a block's side in "
                            "pixels, rounded up to the model's pad multiple (each block is read with the "
                            "receptive-field context around it)")


class FinetuneConfig(BaseModel):
    """How to fine-tune a model on a lab's labelled images: what `nuclei finetune`, the `finetune` flow and
    `nuclei.training.finetune.finetune` take (the training recipe is the starting model's, changed as
    `nuclei.training.finetune.FINETUNE_CHANGES` says)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: str | list[str] = Field(description="labelled folder(s): images/+labels/, stage1_train/ or "
                                      "train|test/inputs|masks (e.g. labels exported by nuclei and corrected in "
                                      "napari or QuPath)")
    name: str = Field(description="name of the new model directory, created as OUT_DIR/NAME")
    out_dir: str = Field(default="models", description="parent folder of the model directory")
    minutes: float = Field(default=15.0, description="time budget for the whole fine-tune")
    base: str | None = Field(default=None, description="model directory to start from (default: the shipped model for "
                             "these images)")
    held_back: float = Field(default=0.3, description="share of the images kept out of training to compare the two "
                             "models on (0: train on all, no comparison)")
    seed: int = Field(default=12345, description="seed of the hold-back and validation choice")
