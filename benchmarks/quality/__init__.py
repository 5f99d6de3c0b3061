"""Quality experiments: models scored on images they never trained on (model runs; many take 10+ minutes)."""
