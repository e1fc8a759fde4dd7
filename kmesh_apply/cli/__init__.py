"""Command lines: `kmesh-apply` (declarative) and `kmesh` (the seed's imperative map commands)."""
