"""The serving path: poll, decode, state, encode, infer, decide, emit, store, commit."""
