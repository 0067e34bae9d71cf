//! The participants SDK arrives with its own issue; this crate reserves the name in the workspace.
