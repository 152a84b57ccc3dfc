"""DiffCoRe-Mix pixel/patch mixing of real and accepted synthetic images (METHODS §3)."""
