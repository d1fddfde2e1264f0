"""KV memory: slot allocator, request->token table, per-layer K/V pools, prefix caches."""
