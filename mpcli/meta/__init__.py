"""Meta-learning core: pure functions over parameter dicts (torch.func)."""
