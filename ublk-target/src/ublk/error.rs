//! Errors of the ublk front end's control path (creating, recovering,
//! listing and deleting devices). Request errors never get here: they
//! become an errno in `request::completion_result`.

use libublk::UblkError;

#[derive(Debug, thiserror::Error)]
pub enum FrontEndError {
    /// A libublk call failed; `what` says which step.
    #[error("{what}: {detail}")]
    Ublk { what: String, detail: String },
    /// A system call or file operation failed. The cause is in the
    /// message, not the error's source (`{:#}` would print it twice).
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    /// Bad arguments or a device in the wrong state.
    #[error("{0}")]
    Invalid(String),
}

pub type FrontEndResult<T> = Result<T, FrontEndError>;

impl FrontEndError {
    pub(crate) fn ublk(what: impl Into<String>, e: UblkError) -> FrontEndError {
        let detail = match e {
            UblkError::OtherError(errno) | UblkError::UringIOError(errno) => {
                std::io::Error::from_raw_os_error(errno.abs()).to_string()
            }
            UblkError::IOError(io) => io.to_string(),
            other => format!("{other} ({other:?})"),
        };
        FrontEndError::Ublk {
            what: what.into(),
            detail,
        }
    }

    pub(crate) fn errno(what: impl Into<String>, res: i32) -> FrontEndError {
        FrontEndError::Io {
            what: what.into(),
            cause: std::io::Error::from_raw_os_error(res.abs()),
        }
    }

    pub(crate) fn sys(what: impl Into<String>, e: nix::Error) -> FrontEndError {
        FrontEndError::Io {
            what: what.into(),
            cause: std::io::Error::from(e),
        }
    }

    pub(crate) fn io(what: impl Into<String>, cause: std::io::Error) -> FrontEndError {
        FrontEndError::Io {
            what: what.into(),
            cause,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::with_sources;

    #[test]
    fn the_cause_of_a_failed_call_is_printed_once() {
        let e = FrontEndError::errno("opening /dev/ublkc7", -libc::ENOENT);
        let text = with_sources(&e);
        assert_eq!(
            text,
            "opening /dev/ublkc7: No such file or directory (os error 2)"
        );
    }
}
