"""Data: tokenizers, file loading + validation, collation into padded tensors."""
