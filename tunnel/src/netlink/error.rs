//! [`NetlinkError`]: which operation failed and the kernel's errno (with
//! its extended-ack message when it gave one). Callers decide by errno
//! ([`NetlinkError::is_not_found`], [`NetlinkError::is_exists`]), never by text.

use std::io;

use netlink_packet_core::{NlaBuffer, NlasIterator};

/// `NLM_F_CAPPED`: the error carries only the request's header.
const NLM_F_CAPPED: u16 = 0x100;
/// `NLM_F_ACK_TLVS`: extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: the kernel's message, a C string.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Length of a netlink message header.
const NLMSG_HDRLEN: usize = 16;

/// A netlink operation that failed: what was being done
/// ("adding route 10.1.2.0/24 dev mg-wg0 table 28007") and why.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {error}{}", detail(.error, .kernel_message))]
pub struct NetlinkError {
    op: String,
    error: io::Error,
    kernel_message: Option<String>,
}

fn detail(error: &io::Error, kernel_message: &Option<String>) -> String {
    let mut s = String::new();
    if let Some(m) = kernel_message {
        s.push_str(&format!(" (kernel: {m})"));
    }
    if matches!(error.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
        s.push_str(" (changing the network needs CAP_NET_ADMIN: run as root)");
    }
    s
}

impl NetlinkError {
    /// `op` failed with `error` (a socket error, or one this crate found
    /// before asking the kernel).
    pub fn io(op: String, error: io::Error) -> NetlinkError {
        NetlinkError {
            op,
            error,
            kernel_message: None,
        }
    }

    /// The kernel refused `op` with `errno`.
    pub fn kernel(op: String, errno: i32, kernel_message: Option<String>) -> NetlinkError {
        NetlinkError {
            op,
            error: io::Error::from_raw_os_error(errno),
            kernel_message,
        }
    }

    /// What was being done.
    pub fn operation(&self) -> &str {
        &self.op
    }

    /// The errno, when the kernel (or a system call) gave one.
    pub fn errno(&self) -> Option<i32> {
        self.error.raw_os_error()
    }

    /// The error as `std::io::Error`.
    pub fn io_error(&self) -> &io::Error {
        &self.error
    }

    /// The kernel's extended-ack message, if it sent one.
    pub fn kernel_message(&self) -> Option<&str> {
        self.kernel_message.as_deref()
    }

    /// The object (route, rule, address, device) is not there:
    /// ENOENT, ESRCH or ENODEV.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENOENT | libc::ESRCH | libc::ENODEV)
        )
    }

    /// The object is there already: EEXIST.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }
}

/// The message in an NLMSG_ERROR's extended-ack attributes: `flags` are the
/// error message's header flags, `payload` what follows its error code
/// (the request's header, or the whole request, then the attributes).
pub(crate) fn ext_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let skip = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        let len = u32::from_ne_bytes(payload.get(..4)?.try_into().ok()?) as usize;
        super::align(len)
    };
    NlasIterator::new(payload.get(skip..)?)
        .filter_map(Result::ok)
        .find(|nla: &NlaBuffer<&[u8]>| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            let v = nla.value();
            let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
            String::from_utf8_lossy(&v[..end]).into_owned()
        })
        .filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_operation_and_the_errno_and_tells_by_errno() {
        let e = NetlinkError::kernel(
            "deleting route 10.1.2.0/24 dev mg-wg0 table 28007".into(),
            libc::ESRCH,
            None,
        );
        let s = e.to_string();
        assert!(
            s.starts_with("deleting route 10.1.2.0/24 dev mg-wg0 table 28007: "),
            "{s}"
        );
        assert!(s.contains(&format!("os error {}", libc::ESRCH)), "{s}");
        assert!(e.is_not_found() && !e.is_exists());
        assert_eq!(e.errno(), Some(libc::ESRCH));
        for errno in [libc::ENOENT, libc::ENODEV] {
            assert!(NetlinkError::kernel(String::new(), errno, None).is_not_found());
        }
        let exists = NetlinkError::kernel("adding rule".into(), libc::EEXIST, None);
        assert!(exists.is_exists() && !exists.is_not_found());
        let eperm = NetlinkError::kernel("adding rule".into(), libc::EPERM, None);
        assert!(eperm.to_string().contains("run as root"), "{eperm}");
    }

    /// The kernel's text is shown, never interpreted.
    #[test]
    fn keeps_the_kernels_extended_ack_message() {
        // Capped: the request's 16-byte header, then NLMSGERR_ATTR_MSG.
        let mut payload = vec![0u8; NLMSG_HDRLEN];
        let msg = b"Nexthop device is not up\0";
        let nla_len = 4 + msg.len();
        payload.extend_from_slice(&(nla_len as u16).to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(msg);
        payload.resize(super::super::align(payload.len()), 0);
        assert_eq!(
            ext_ack_message(NLM_F_CAPPED | NLM_F_ACK_TLVS, &payload).as_deref(),
            Some("Nexthop device is not up")
        );
        assert_eq!(ext_ack_message(NLM_F_CAPPED, &payload), None);
        // Not capped: the whole request (20 bytes here) comes first.
        let mut uncapped = vec![0u8; 20];
        uncapped[..4].copy_from_slice(&20u32.to_ne_bytes());
        uncapped.extend_from_slice(&payload[NLMSG_HDRLEN..]);
        assert_eq!(
            ext_ack_message(NLM_F_ACK_TLVS, &uncapped).as_deref(),
            Some("Nexthop device is not up")
        );
        let e = NetlinkError::kernel(
            "adding route".into(),
            libc::ENETDOWN,
            Some("Nexthop device is not up".into()),
        );
        assert!(
            e.to_string()
                .ends_with("(kernel: Nexthop device is not up)"),
            "{e}"
        );
    }
}
