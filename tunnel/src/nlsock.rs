//! One synchronous netlink request: send, then read the replies up to the
//! kernel's acknowledgement (or a dump's end). The kernel's error comes back
//! as its errno, in a [`std::io::Error`], with what was being done.

use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_sys::{Socket, SocketAddr};

/// A failed netlink request, with the kernel's errno when it gave one.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct NlError {
    pub what: String,
    #[source]
    pub source: std::io::Error,
}

pub(crate) fn io_err(what: &str, source: std::io::Error) -> NlError {
    NlError {
        what: what.to_string(),
        source,
    }
}

/// Sends `msg` (with `extra_flags`: create, replace, dump...) and waits
/// for the kernel's acknowledgement or the dump's end; the replies before
/// it are returned.
pub(crate) fn request<F>(
    protocol: isize,
    mut msg: NetlinkMessage<F>,
    extra_flags: u16,
    what: &str,
) -> Result<Vec<NetlinkMessage<F>>, NlError>
where
    F: std::fmt::Debug + Clone + Eq + NetlinkSerializable,
    NetlinkMessage<F>: Clone,
    F: netlink_packet_core::NetlinkDeserializable,
{
    msg.header.flags = NLM_F_REQUEST | NLM_F_ACK | extra_flags;
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    let socket = Socket::new(protocol).map_err(|e| io_err(what, e))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| io_err(what, e))?;
    socket.send(&buf, 0).map_err(|e| io_err(what, e))?;
    let mut replies = Vec::new();
    let mut rx = vec![0u8; 16 * 1024];
    loop {
        let n = socket
            .recv(&mut &mut rx[..], 0)
            .map_err(|e| io_err(what, e))?;
        let mut at = 0;
        while at < n {
            let reply = NetlinkMessage::<F>::deserialize(&rx[at..n]).map_err(|e| {
                io_err(
                    what,
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
                )
            })?;
            let len = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Error(e) if e.code.is_none() => return Ok(replies),
                NetlinkPayload::Error(e) => return Err(io_err(what, e.to_io())),
                NetlinkPayload::Done(_) => return Ok(replies),
                _ => replies.push(reply),
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
}
