"""Architecture adapters: how units are found and reached inside a family of models."""
