//! The FUSE side: each kernel request becomes a call on the shared [`Model`].
//!
//! - No writeback cache is asked for, so every `write(2)` reaches [`Model::write`] before it
//!   returns; the kernel keeps no dirty data of its own that could outlive a cut. (Shared
//!   `mmap` writes would be kernel-dirty until written back; nothing under test uses them.)
//! - `fsync`/`fdatasync` arrive as FUSE_FSYNC, a directory's as FUSE_FSYNCDIR.
//!   `sync_file_range(2)` never reaches a FUSE file system: without a writeback cache there is
//!   nothing for it to write back, so it returns at once and makes nothing durable — as on a
//!   disk with a volatile write cache, where it neither flushes that cache nor writes the
//!   file's size.
//! - Locks (`flock`, `fcntl`) are left to the kernel, which handles them locally when the file
//!   system does not claim them: right for one mount.
//! - A request that arrives after a cut, or for a mount generation that was replaced, fails
//!   with EIO.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

use crate::model::{Attr, Body, Data, Kind, Model, SetAttr};

/// Everything goes through this mount, so cached attributes and entries never go stale: the
/// only change behind the kernel's back is a cut, which remounts.
const TTL: Duration = Duration::from_secs(1);

pub(crate) struct Shared {
    pub model: Model,
    /// Bumped by every cut: requests of the old mount find a different number and fail.
    pub generation: u64,
}

pub(crate) struct LossyFuse {
    pub shared: Arc<Mutex<Shared>>,
    pub generation: u64,
}

fn kind(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn err(e: i32) -> Errno {
    Errno::from_i32(e)
}

impl LossyFuse {
    /// The model, if this mount is still the current one.
    fn model(&self) -> Result<MutexGuard<'_, Shared>, Errno> {
        let g = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if g.generation == self.generation {
            Ok(g)
        } else {
            Err(Errno::EIO)
        }
    }

    fn entry(&self, reply: ReplyEntry, f: impl FnOnce(&mut Model) -> Result<Attr, i32>) {
        match self.model() {
            Ok(mut g) => match f(&mut g.model) {
                Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
                Err(e) => reply.error(err(e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn empty(&self, reply: ReplyEmpty, f: impl FnOnce(&mut Model) -> Result<(), i32>) {
        match self.model() {
            Ok(mut g) => match f(&mut g.model) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(err(e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn attr(&self, reply: ReplyAttr, f: impl FnOnce(&mut Model) -> Result<Attr, i32>) {
        match self.model() {
            Ok(mut g) => match f(&mut g.model) {
                Ok(a) => reply.attr(&TTL, &file_attr(&a)),
                Err(e) => reply.error(err(e)),
            },
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for LossyFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large writes mean fewer requests; the value is capped by what the kernel allows.
        let _ = config.set_max_write(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry(reply, |m| m.lookup(parent.0, name));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if let Ok(mut g) = self.model() {
            g.model.forget(ino.0, nlookup);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.attr(reply, |m| m.attr(ino.0));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let s = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
        };
        self.attr(reply, |m| m.setattr(ino.0, s));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.model() {
            Ok(g) => match g.model.readlink(ino.0) {
                Ok(t) => reply.data(t.as_encoded_bytes()),
                Err(e) => reply.error(err(e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let perm = (mode & !umask & 0o7777) as u16;
        self.entry(reply, |m| {
            m.make(
                parent.0,
                name,
                Body::File(Data::default()),
                perm,
                req.uid(),
                req.gid(),
            )
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let perm = (mode & !umask & 0o7777) as u16;
        self.entry(reply, |m| {
            m.make(
                parent.0,
                name,
                Body::Dir(Default::default()),
                perm,
                req.uid(),
                req.gid(),
            )
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty(reply, |m| m.remove(parent.0, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty(reply, |m| m.remove(parent.0, name, true));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let body = Body::Symlink(target.as_os_str().to_os_string());
        self.entry(reply, |m| {
            m.make(parent.0, link_name, body, 0o777, req.uid(), req.gid())
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.empty(reply, |m| {
            m.rename(parent.0, name, newparent.0, newname, flags.bits())
        });
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // One name per inode keeps the durable model simple; nothing under test links.
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.model() {
            // No FOPEN_KEEP_CACHE: the kernel drops its cached pages of the file on open.
            Ok(mut g) => match g.model.open(ino.0) {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(err(e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.model() {
            Ok(g) => match g.model.read(ino.0, offset, size as usize) {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => reply.error(err(e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.model() {
            Ok(mut g) => match g.model.write(ino.0, offset, data) {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(err(e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Released after a cut too: the handle belongs to the old mount and goes with it.
        if let Ok(mut g) = self.model() {
            g.model.release(fh.0);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // fdatasync also writes the size when data depends on it; the model syncs both alike.
        self.empty(reply, |m| m.fsync(ino.0));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.model() {
            Ok(mut g) => match g.model.open(ino.0) {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(err(e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.model() {
            Ok(g) => g.model.readdir(ino.0),
            Err(e) => return reply.error(e),
        };
        match entries {
            Ok(entries) => {
                for (i, (child, k, name)) in entries.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*child), i as u64 + 1, kind(*k), name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        if let Ok(mut g) = self.model() {
            g.model.release(fh.0);
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.empty(reply, |m| m.fsyncdir(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Memory is the limit; report a large, mostly free disk.
        reply.statfs(1 << 26, 1 << 25, 1 << 25, 1 << 20, 1 << 19, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        self.empty(reply, |m| m.attr(ino.0).map(|_| ()));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let perm = (mode & !umask & 0o7777) as u16;
        let mut g = match self.model() {
            Ok(g) => g,
            Err(e) => return reply.error(e),
        };
        let made = g.model.make(
            parent.0,
            name,
            Body::File(Data::default()),
            perm,
            req.uid(),
            req.gid(),
        );
        let opened = made.and_then(|a| g.model.open(a.ino).map(|fh| (a, fh)));
        match opened {
            Ok((a, fh)) => reply.created(
                &TTL,
                &file_attr(&a),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.empty(reply, |m| m.fallocate(ino.0, offset, length, mode));
    }
}
