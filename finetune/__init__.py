"""Subject-driven fine-tuning (DreamBooth for the token model): what trains, adapters, data, class images."""
