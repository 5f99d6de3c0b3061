"""Reading images and labelled datasets from files and URLs; finding the images of a run."""
