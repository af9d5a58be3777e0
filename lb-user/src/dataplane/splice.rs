//! The sockmap splice engine's two socket hashes and its `lb_splice` verdict program:
//! loaded and attached here, written (a pair joins, hooks, leaves) for `proxy::splice`.

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::Mutex;

use aya::Ebpf;
use aya::maps::{Array, MapData, MapError, SockHash};
use aya::programs::{SkSkb, sk_skb::SkSkbLink};
use lb_common::maps::{SpliceLayout, names};

use super::kernel_btf::{self, Btf, BtfError};
use super::{Dataplane, DataplaneError, map_error, program_error};

impl Dataplane {
    /// The sockmap splice engine's maps, with `lb_splice` attached (once per daemon).
    pub fn splice_maps(&mut self) -> Result<SpliceMaps, DataplaneError> {
        let maps =
            SpliceMaps::load(&mut self.ebpf).map_err(|e| DataplaneError::Splice(Box::new(e)))?;
        self.pin_program(names::PROG_SPLICE)?;
        Ok(maps)
    }
}

/// The sockmap engine's socket hashes, shared by all splice tasks, and the attachment of
/// `lb_splice` to `SPLICE_HOOK` (detached when this is dropped).
///
/// `SPLICE` maps a socket's cookie to its PEER and is only the redirect target;
/// `SPLICE_HOOK` maps a cookie to the socket itself and carries the verdict program.
/// A pair is joined by filling `SPLICE` first and hooking second, so the verdict never
/// runs for a socket whose peer entry is missing (it would drop the bytes).
pub struct SpliceMaps {
    maps: Mutex<Maps>,
    _link: SkSkbLink,
}

struct Maps {
    peers: SockHash<MapData, u64>,
    hook: SockHash<MapData, u64>,
}

impl SpliceMaps {
    /// Takes `SPLICE` and `SPLICE_HOOK` out of `ebpf`, loads `lb_splice` and attaches it
    /// to `SPLICE_HOOK`. Call once per loaded object; the returned value owns the maps
    /// and the attachment, so `ebpf` may be dropped afterwards. Size the maps (two
    /// entries per connection; default 131072) with `EbpfLoader::set_max_entries`.
    pub fn load(ebpf: &mut Ebpf) -> Result<SpliceMaps, DataplaneError> {
        let layout = kernel_layout(Path::new(kernel_btf::VMLINUX))?;
        let mut layout_map: Array<&mut MapData, SpliceLayout> = ebpf
            .map_mut(names::SPLICE_LAYOUT)
            .ok_or(DataplaneError::MissingMap(names::SPLICE_LAYOUT))?
            .try_into()
            .map_err(map_error(names::SPLICE_LAYOUT))?;
        // Before the attach: from its first skb on, lb_splice can cut bytes already had.
        layout_map
            .set(0, layout, 0)
            .map_err(map_error(names::SPLICE_LAYOUT))?;
        let hook = take_sock_hash(ebpf, names::SPLICE_HOOK)?;
        let peers = take_sock_hash(ebpf, names::SPLICE)?;
        let wrap = program_error(names::PROG_SPLICE);
        let prog: &mut SkSkb = ebpf
            .program_mut(names::PROG_SPLICE)
            .ok_or(DataplaneError::MissingProgram(names::PROG_SPLICE))?
            .try_into()
            .map_err(wrap)?;
        prog.load().map_err(wrap)?;
        let id = prog.attach(hook.fd()).map_err(wrap)?;
        let link = prog.take_link(id).map_err(wrap)?;
        Ok(SpliceMaps {
            maps: Mutex::new(Maps { peers, hook }),
            _link: link,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        // A panic while holding the lock cannot leave the maps half-updated in a way
        // that matters here (every entry is keyed by a unique cookie): go on.
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enters the pair in `SPLICE` (each socket under its peer's cookie). Hooks nothing
    /// yet: on error the maps are as before.
    pub fn pair(
        &self,
        client: BorrowedFd<'_>,
        client_cookie: u64,
        backend: BorrowedFd<'_>,
        backend_cookie: u64,
    ) -> Result<(), MapError> {
        let mut m = self.lock();
        m.peers.insert(client_cookie, backend, 0)?;
        if let Err(e) = m.peers.insert(backend_cookie, client, 0) {
            let _ = m.peers.remove(&client_cookie);
            return Err(e);
        }
        Ok(())
    }

    /// Enters a paired socket in `SPLICE_HOOK`: from now on the verdict redirects what it
    /// receives to its peer.
    pub fn hook(&self, socket: BorrowedFd<'_>, cookie: u64) -> Result<(), MapError> {
        self.lock().hook.insert(cookie, socket, 0)
    }

    /// Takes a socket out of `SPLICE_HOOK`: its verdict stops (the kernel restores its
    /// data_ready), so what it receives from now on stays in its receive queue for user
    /// space. It stays in `SPLICE` as its peer's redirect target. A socket not hooked
    /// (or already closed, which removes it from every socket map) is left as it is.
    pub fn unhook(&self, cookie: u64) {
        let _ = self.lock().hook.remove(&cookie);
    }

    /// Removes the pair's entries (missing ones are fine: closing a socket removes it
    /// from every socket map by itself).
    pub fn leave(&self, client_cookie: u64, backend_cookie: u64) {
        let mut m = self.lock();
        for c in [client_cookie, backend_cookie] {
            let _ = m.hook.remove(&c);
        }
        for c in [client_cookie, backend_cookie] {
            let _ = m.peers.remove(&c);
        }
    }
}

/// The offsets of the kernel fields `lb_splice` reads (see `SpliceLayout`), from the BTF
/// at `btf` (the running kernel's).
fn kernel_layout(btf: &Path) -> Result<SpliceLayout, BtfError> {
    let btf = Btf::read(btf)?;
    Ok(SpliceLayout {
        skb_sk: btf.member_offset("sk_buff", "sk")?,
        skb_seq: btf.member_offset("sk_buff", "cb")? + btf.member_offset("tcp_skb_cb", "seq")?,
        copied_seq: btf.member_offset("tcp_sock", "copied_seq")?,
        ready: 1,
    })
}

/// Takes a socket hash out of the object, so the returned value owns it.
fn take_sock_hash(
    ebpf: &mut Ebpf,
    map: &'static str,
) -> Result<SockHash<MapData, u64>, DataplaneError> {
    ebpf.take_map(map)
        .ok_or(DataplaneError::MissingMap(map))?
        .try_into()
        .map_err(map_error(map))
}
