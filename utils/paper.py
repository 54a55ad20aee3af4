"""Numbers the papers report, to print beside ours. Percent, as printed in the papers."""

# MRKD paper, Table 1 (image AU-ROC) and Table 2 (pixel AU-ROC / AU-PRO), MVTec AD.
# The paper's AU-PRO comes from the authors' code, which computes PRO per image
# (our `aupro_per_image`), not the standard whole-set AU-PRO (our `aupro`).
MRKD_MVTEC = {
    # category: (image AU-ROC, pixel AU-ROC, AU-PRO as the authors compute it)
    "carpet": (100.0, 99.3, 98.1),
    "grid": (100.0, 99.3, 97.5),
    "leather": (100.0, 99.5, 99.2),
    "tile": (99.2, 95.9, 91.9),
    "wood": (99.4, 95.9, 92.5),
    "bottle": (100.0, 98.7, 96.9),
    "cable": (98.4, 98.3, 94.2),
    "capsule": (96.5, 98.8, 95.3),
    "hazelnut": (99.2, 99.1, 95.5),
    "metal_nut": (100.0, 97.6, 91.7),
    "pill": (98.1, 98.5, 97.1),
    "screw": (98.2, 99.6, 98.4),
    "toothbrush": (97.8, 99.1, 94.1),
    "transistor": (100.0, 98.1, 91.4),
    "zipper": (97.3, 98.3, 95.4),
    "mean": (98.9, 98.4, 95.3),
}

# RD4AD as the MRKD paper reports it (Tables 1 and 2, column RD4AD).
RD4AD_MVTEC = {
    "carpet": (98.9, 98.9, 97.0),
    "grid": (100.0, 99.3, 97.6),
    "leather": (100.0, 99.4, 99.1),
    "tile": (99.3, 95.6, 90.6),
    "wood": (99.2, 95.3, 90.9),
    "bottle": (100.0, 98.7, 96.6),
    "cable": (95.0, 97.4, 91.0),
    "capsule": (96.3, 98.7, 95.8),
    "hazelnut": (99.9, 98.9, 95.5),
    "metal_nut": (100.0, 97.3, 92.3),
    "pill": (96.6, 98.2, 96.4),
    "screw": (97.0, 99.6, 98.2),
    "toothbrush": (99.5, 99.1, 94.5),
    "transistor": (96.7, 92.5, 78.0),
    "zipper": (98.5, 98.2, 95.4),
    "mean": (98.5, 97.8, 93.9),
}

# Table 3: MTD, image AU-ROC only. Table 4: BTAD, pixel AU-ROC only (the paper's
# classes 0, 1, 2 are the dataset's folders 01, 02, 03).
MRKD_MTD = {"mtd": (98.7, None, None), "mean": (98.7, None, None)}
MRKD_BTAD = {"01": (None, 97.0, None), "02": (None, 97.0, None), "03": (None, 100.0, None),
             "mean": (None, 98.0, None)}

# DRD's abstract: MVTec AD means only (image and pixel AU-ROC), its checkpoint picked on the test set.
DRD_MVTEC = {"mean": (99.46, 98.39, None)}
# RD++ paper (Tien et al., CVPR 2023), MVTec AD means; its AU-PRO computed per image by its code.
RDPP_MVTEC = {"mean": (99.44, 98.25, 94.99)}

PAPER = {("drd", "mvtec"): DRD_MVTEC, ("rdpp", "mvtec"): RDPP_MVTEC, ("mrkd", "mvtec"): MRKD_MVTEC, ("rd4ad", "mvtec"): RD4AD_MVTEC,
         ("mrkd", "mtd"): MRKD_MTD, ("mrkd", "btad"): MRKD_BTAD}

# RD++'s epochs per MVTec AD category, as its release trains them (main.py of
# tientrandinh/Revisiting-Reverse-Distillation); main.py's CATEGORY_EPOCHS="rdpp" opts in.
RDPP_EPOCHS = {"carpet": 10, "leather": 10, "grid": 260, "tile": 260, "wood": 100, "cable": 240, "capsule": 300,
               "transistor": 300, "zipper": 300, "hazelnut": 160, "metal_nut": 160, "screw": 280, "toothbrush": 280,
               "pill": 200, "bottle": 200}
