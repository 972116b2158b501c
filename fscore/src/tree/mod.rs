mod edit;
mod path;
mod read;
mod verify;

pub(crate) use path::{Tree, HEIGHT_MAX};
pub(crate) use verify::TreeVisitor;
