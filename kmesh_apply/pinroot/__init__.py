"""Everything about a pin root on disk, in one place.

- `guard`: the checks a pin root must pass before the tool touches it, and its lock;
- `records`: the tool's own records kept in the pin root (reserved names in `state`);
- `replaced`: the record of maps replaced while loaded programs held them;
- `reader`: the live state of a pin root, read through the kernel layer.

The planner never imports this package: it sees only the `state.LiveState` the reader makes.
"""
