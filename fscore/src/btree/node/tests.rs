//! Unit and property tests of the node layout (test-only).

mod corrupt;
mod model;
mod split;
mod support;
