mod edit;
mod path;
mod read;
mod shape;
mod verify;

pub use shape::LevelShape;

pub(crate) use path::{Tree, HEIGHT_MAX};
pub(crate) use verify::TreeVisitor;
