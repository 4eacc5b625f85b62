"""diffusers interoperation: reading its configs, and diffusers as a peer (tests, bench)."""
