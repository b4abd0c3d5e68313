//! The checkpoint tensor inventory: expected names, shapes and types, and their validation.
