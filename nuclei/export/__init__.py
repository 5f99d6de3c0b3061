"""A model directory in other tools' formats: a bioimage.io model package (`nuclei export-model --bioimageio`).

`bioimageio` packages (weights, preprocessing, test tensors, cover); `model_card` writes the package's
documentation from the Markdown templates in `templates/`.
"""
