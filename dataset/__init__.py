"""Data: file discovery (folders), torch datasets (images), synthetic demo data
(demo) and natural synthetic anomalies for image-level masking (nsa)."""

from dataset.demo import make_demo_dataset, make_demo_mvtec_ad_2, make_demo_visa
from dataset.folders import (
    CATEGORIES,
    DATASET_URLS,
    MTD_SPLIT_SEED,
    MVTEC_AD_2_CATEGORIES,
    MVTEC_CATEGORIES,
    VISA_CATEGORIES,
    CategoryFiles,
    TestSample,
    category_files,
    images_under,
    list_categories,
)
from dataset.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EpochSampler,
    ImageFiles,
    TestImages,
    TrainImages,
    load_image,
    load_mask,
    seed_worker,
    to_tensor,
)

__all__ = [
    "CATEGORIES",
    "DATASET_URLS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MTD_SPLIT_SEED",
    "MVTEC_AD_2_CATEGORIES",
    "MVTEC_CATEGORIES",
    "VISA_CATEGORIES",
    "CategoryFiles",
    "EpochSampler",
    "ImageFiles",
    "TestImages",
    "TestSample",
    "TrainImages",
    "category_files",
    "images_under",
    "list_categories",
    "load_image",
    "load_mask",
    "make_demo_dataset",
    "make_demo_mvtec_ad_2",
    "make_demo_visa",
    "seed_worker",
    "to_tensor",
]
