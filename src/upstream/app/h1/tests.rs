//! The client against a scripted peer on a real socket pair.
