//! The file system's state, with no FUSE in it, so that its rules are tested directly.
//!
//! Two trees of inodes:
//! - the **live** tree is what programs see: every write, truncate, create, rename and unlink
//!   lands here at once, as it would in the kernel's page cache and dentry cache;
//! - the **durable** tree is what the disk holds. Only these move data into it:
//!   - `fsync`/`fdatasync` of a file: its data, size and attributes (not its name);
//!   - `fsync` of a directory: its entries (names → inodes). A name made durable for an inode
//!     whose data never was gets an empty file: the inode exists on disk, its data does not;
//!   - [`Model::sync_all`] (`sync(2)`, or a clean shutdown): everything.
//!
//! A power cut ([`Model::cut`]) throws the live tree away; what remains is the durable tree,
//! reachable from the root. That is POSIX's minimum (fsync(2): "Calling fsync() does not
//! necessarily ensure that the entry in the directory containing the file has also reached
//! disk. For that an explicit fsync() on a file descriptor for the directory is also needed").
//! Real file systems often keep more (ext4 commits its journal every 5 s, and an fsync of one
//! file there commits every earlier metadata change); this model keeps the least a disk may
//! keep, so that a program passes it only if it asks for everything it relies on.
//!
//! Optionally ([`CutMode::Torn`]) a seeded random part of the unsynced pages of durable files
//! survives the cut, page by page, as a disk that wrote some of its cache before the power went.
//!
//! Hard links are not supported (no program under test makes them); every inode has at most
//! one live name.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// The unit of the page cache: sharing between the trees and torn cuts work page by page.
pub const PAGE: usize = 4096;
const PAGE64: u64 = PAGE as u64;
type Page = Arc<[u8; PAGE]>;

/// An errno value, as FUSE answers it.
pub type Errno = i32;
pub type Res<T> = Result<T, Errno>;

/// The root directory's inode number (FUSE's).
pub const ROOT: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// A file's bytes: pages by number; a missing page reads as zeros (a hole). Bytes past `size`
/// in the last page are always zero, so that growing the file shows zeros there.
#[derive(Clone, Default, Debug)]
pub struct Data {
    size: u64,
    pages: BTreeMap<u64, Page>,
}

/// What changed in a live file since its last fsync.
#[derive(Default, Debug)]
struct Dirty {
    pages: BTreeSet<u64>,
    size: bool,
    /// The file was truncated: durable pages from this page on must go at the next fsync.
    drop_from: Option<u64>,
}

impl Data {
    pub fn len(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    pub fn read(&self, off: u64, len: usize) -> Vec<u8> {
        if off >= self.size {
            return Vec::new();
        }
        let end = off.saturating_add(len as u64).min(self.size);
        let mut out = vec![0u8; (end - off) as usize];
        let mut pos = off;
        while pos < end {
            let in_page = (pos % PAGE64) as usize;
            let n = ((PAGE - in_page) as u64).min(end - pos) as usize;
            if let Some(page) = self.pages.get(&(pos / PAGE64)) {
                let at = (pos - off) as usize;
                out[at..at + n].copy_from_slice(&page[in_page..in_page + n]);
            }
            pos += n as u64;
        }
        out
    }

    fn write(&mut self, off: u64, buf: &[u8], dirty: &mut Dirty) {
        let mut pos = off;
        let mut rest = buf;
        while !rest.is_empty() {
            let p = pos / PAGE64;
            let in_page = (pos % PAGE64) as usize;
            let n = (PAGE - in_page).min(rest.len());
            let page = self.pages.entry(p).or_insert_with(|| Arc::new([0u8; PAGE]));
            Arc::make_mut(page)[in_page..in_page + n].copy_from_slice(&rest[..n]);
            dirty.pages.insert(p);
            pos += n as u64;
            rest = &rest[n..];
        }
        if pos > self.size {
            self.size = pos;
            dirty.size = true;
        }
    }

    fn truncate(&mut self, size: u64, dirty: &mut Dirty) {
        if size < self.size {
            let keep = size.div_ceil(PAGE64);
            drop(self.pages.split_off(&keep));
            let in_page = (size % PAGE64) as usize;
            if in_page != 0 {
                let last = size / PAGE64;
                if let Some(page) = self.pages.get_mut(&last) {
                    Arc::make_mut(page)[in_page..].fill(0);
                    dirty.pages.insert(last);
                }
            }
            dirty.drop_from = Some(dirty.drop_from.map_or(keep, |d| d.min(keep)));
        }
        if size != self.size {
            self.size = size;
            dirty.size = true;
        }
    }

    /// Zeros `[off, off + len)` within the file (FALLOC_FL_PUNCH_HOLE / ZERO_RANGE).
    fn zero(&mut self, off: u64, len: u64, dirty: &mut Dirty) {
        let end = off.saturating_add(len).min(self.size);
        let mut pos = off;
        while pos < end {
            let p = pos / PAGE64;
            let in_page = (pos % PAGE64) as usize;
            let n = ((PAGE - in_page) as u64).min(end - pos) as usize;
            if n == PAGE {
                if self.pages.remove(&p).is_some() {
                    dirty.pages.insert(p);
                }
            } else if let Some(page) = self.pages.get_mut(&p) {
                Arc::make_mut(page)[in_page..in_page + n].fill(0);
                dirty.pages.insert(p);
            }
            pos += n as u64;
        }
    }

    fn from_bytes(bytes: &[u8]) -> Data {
        let mut pages = BTreeMap::new();
        for (i, chunk) in bytes.chunks(PAGE).enumerate() {
            if chunk.iter().all(|b| *b == 0) {
                continue;
            }
            let mut page = [0u8; PAGE];
            page[..chunk.len()].copy_from_slice(chunk);
            pages.insert(i as u64, Arc::new(page));
        }
        Data {
            size: bytes.len() as u64,
            pages,
        }
    }
}

#[derive(Clone, Debug)]
pub enum Body {
    File(Data),
    /// Entries by name. Sorted, so `readdir` offsets are stable.
    Dir(BTreeMap<OsString, u64>),
    Symlink(OsString),
}

#[derive(Clone, Debug)]
pub struct Node {
    pub body: Body,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// Live tree only: the directory holding this directory (for `..` and rename checks).
    parent: u64,
    /// Live tree only: how many live names the inode has (0 or 1: no hard links).
    names: u32,
}

impl Node {
    fn new(body: Body, perm: u16, uid: u32, gid: u32, parent: u64) -> Node {
        let now = SystemTime::now();
        Node {
            body,
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            parent,
            names: 1,
        }
    }

    pub fn kind(&self) -> Kind {
        match self.body {
            Body::File(_) => Kind::File,
            Body::Dir(_) => Kind::Dir,
            Body::Symlink(_) => Kind::Symlink,
        }
    }

    /// The same inode with no data: what a disk holds for an inode whose name was made durable
    /// but whose data never was.
    fn skeleton(&self) -> Node {
        let body = match &self.body {
            Body::File(_) => Body::File(Data::default()),
            Body::Dir(_) => Body::Dir(BTreeMap::new()),
            // A symlink's target is written with the inode.
            Body::Symlink(t) => Body::Symlink(t.clone()),
        };
        Node {
            body,
            ..self.clone_meta()
        }
    }

    fn clone_meta(&self) -> Node {
        Node {
            body: Body::Dir(BTreeMap::new()),
            perm: self.perm,
            uid: self.uid,
            gid: self.gid,
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            parent: self.parent,
            names: self.names,
        }
    }
}

/// What `stat` shows of an inode.
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

/// Attribute changes of `setattr`; `None` leaves one alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}

/// What a power cut keeps of the unsynced state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CutMode {
    /// Nothing unsynced survives.
    Clean,
    /// Each unsynced page of a file whose inode is on disk survives with probability
    /// `keep` (and the file's unsynced size with it), drawn from `seed`. Directory entries
    /// still survive only through a directory fsync.
    Torn { seed: u64, keep: f64 },
}

/// What a power cut threw away.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files with unsynced data or size.
    pub files_unsynced: usize,
    /// Their unsynced pages (of [`PAGE`] bytes).
    pub pages_unsynced: usize,
    /// Unsynced pages that survived anyway ([`CutMode::Torn`]).
    pub pages_kept: usize,
    /// Directories with unsynced entries (creates, renames, unlinks).
    pub dirs_unsynced: usize,
}

/// Counters since the model was made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub writes: u64,
    pub bytes_written: u64,
    pub fsyncs: u64,
    pub dir_fsyncs: u64,
    pub truncates: u64,
    pub fallocates: u64,
    pub renames: u64,
    pub unlinks: u64,
}

/// A small deterministic generator for torn cuts (splitmix64).
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Model {
    live: HashMap<u64, Node>,
    durable: HashMap<u64, Node>,
    dirty: HashMap<u64, Dirty>,
    /// Directories whose entries changed since their last fsync.
    dirty_dirs: BTreeSet<u64>,
    /// The kernel's references (lookups not yet forgotten) per inode.
    lookups: HashMap<u64, u64>,
    /// Open file handle → inode.
    handles: HashMap<u64, u64>,
    opens: HashMap<u64, u32>,
    next_ino: u64,
    next_fh: u64,
    /// Set by a cut: every later request fails, as a machine without power answers nothing.
    frozen: bool,
    pub stats: Stats,
}

fn dir_entries(n: &Node) -> Res<&BTreeMap<OsString, u64>> {
    match &n.body {
        Body::Dir(e) => Ok(e),
        _ => Err(libc::ENOTDIR),
    }
}

fn dir_entries_mut(n: &mut Node) -> Res<&mut BTreeMap<OsString, u64>> {
    match &mut n.body {
        Body::Dir(e) => Ok(e),
        _ => Err(libc::ENOTDIR),
    }
}

impl Model {
    /// An empty file system: a root directory owned by `uid`/`gid`.
    pub fn empty(uid: u32, gid: u32) -> Model {
        let root = Node::new(Body::Dir(BTreeMap::new()), 0o755, uid, gid, ROOT);
        let live: HashMap<u64, Node> = [(ROOT, root)].into();
        Model {
            durable: live.clone(),
            live,
            dirty: HashMap::new(),
            dirty_dirs: BTreeSet::new(),
            lookups: HashMap::new(),
            handles: HashMap::new(),
            opens: HashMap::new(),
            next_ino: ROOT + 1,
            next_fh: 1,
            frozen: false,
            stats: Stats::default(),
        }
    }

    /// The tree in `backing` (regular files, directories and symlinks), all of it durable.
    pub fn load(backing: &Path) -> std::io::Result<Model> {
        let meta = std::fs::metadata(backing)?;
        let mut m = Model::empty(meta.uid(), meta.gid());
        if let Some(root) = m.live.get_mut(&ROOT) {
            root.perm = (meta.mode() & 0o7777) as u16;
        }
        m.load_dir(backing, ROOT)?;
        m.durable = m.live.clone();
        Ok(m)
    }

    fn load_dir(&mut self, dir: &Path, ino: u64) -> std::io::Result<()> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            names.push(entry?.file_name());
        }
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let meta = std::fs::symlink_metadata(&path)?;
            let ft = meta.file_type();
            let body = if ft.is_dir() {
                Body::Dir(BTreeMap::new())
            } else if ft.is_symlink() {
                Body::Symlink(std::fs::read_link(&path)?.into_os_string())
            } else if ft.is_file() {
                Body::File(Data::from_bytes(&std::fs::read(&path)?))
            } else {
                continue;
            };
            let child = self.next_ino;
            self.next_ino += 1;
            let mut node = Node::new(
                body,
                (meta.mode() & 0o7777) as u16,
                meta.uid(),
                meta.gid(),
                ino,
            );
            node.mtime = meta.modified().unwrap_or(node.mtime);
            self.live.insert(child, node);
            if let Some(p) = self.live.get_mut(&ino) {
                if let Body::Dir(e) = &mut p.body {
                    e.insert(name, child);
                }
            }
            if ft.is_dir() {
                self.load_dir(&path, child)?;
            }
        }
        Ok(())
    }

    /// Writes the durable tree into `backing`, replacing what is there: afterwards the
    /// directory holds what the disk would.
    pub fn materialize(&self, backing: &Path) -> std::io::Result<()> {
        for entry in std::fs::read_dir(backing)? {
            let p = entry?.path();
            if std::fs::symlink_metadata(&p)?.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
        let mut seen = HashSet::from([ROOT]);
        self.materialize_dir(ROOT, backing, &mut seen)
    }

    fn materialize_dir(&self, ino: u64, at: &Path, seen: &mut HashSet<u64>) -> std::io::Result<()> {
        let Some(Body::Dir(entries)) = self.durable.get(&ino).map(|n| &n.body) else {
            return Ok(());
        };
        for (name, child) in entries {
            let Some(node) = self.durable.get(child) else {
                continue;
            };
            let path = at.join(name);
            match &node.body {
                Body::File(data) => {
                    let mut f = std::fs::File::create(&path)?;
                    let mut pos = 0u64;
                    while pos < data.size {
                        let chunk = data.read(pos, 1 << 20);
                        f.write_all(&chunk)?;
                        pos += chunk.len() as u64;
                    }
                    f.set_len(data.size)?;
                }
                Body::Dir(_) => {
                    // Partly synced renames of directories can name one twice; a disk checker
                    // would keep one of the names.
                    if !seen.insert(*child) {
                        continue;
                    }
                    std::fs::create_dir(&path)?;
                    self.materialize_dir(*child, &path, seen)?;
                }
                Body::Symlink(target) => std::os::unix::fs::symlink(target, &path)?,
            }
            if !matches!(node.body, Body::Symlink(_)) {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(node.perm.into()))?;
            }
        }
        Ok(())
    }

    fn check(&self) -> Res<()> {
        if self.frozen {
            Err(libc::EIO)
        } else {
            Ok(())
        }
    }

    fn node(&self, ino: u64) -> Res<&Node> {
        self.live.get(&ino).ok_or(libc::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Res<&mut Node> {
        self.live.get_mut(&ino).ok_or(libc::ENOENT)
    }

    pub fn attr(&self, ino: u64) -> Res<Attr> {
        self.check()?;
        let n = self.node(ino)?;
        let (size, nlink) = match &n.body {
            Body::File(d) => (d.size, n.names),
            Body::Dir(e) => (PAGE64, if n.names == 0 { 0 } else { 2 + e.len() as u32 }),
            Body::Symlink(t) => (t.len() as u64, n.names),
        };
        Ok(Attr {
            ino,
            kind: n.kind(),
            size,
            perm: n.perm,
            nlink,
            uid: n.uid,
            gid: n.gid,
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.ctime,
        })
    }

    /// The inode `name` in `parent` names, counted as a kernel reference.
    pub fn lookup(&mut self, parent: u64, name: &OsStr) -> Res<Attr> {
        self.check()?;
        let ino = *dir_entries(self.node(parent)?)?
            .get(name)
            .ok_or(libc::ENOENT)?;
        let a = self.attr(ino)?;
        *self.lookups.entry(ino).or_default() += 1;
        Ok(a)
    }

    pub fn forget(&mut self, ino: u64, n: u64) {
        if let Some(l) = self.lookups.get_mut(&ino) {
            *l = l.saturating_sub(n);
            if *l == 0 {
                self.lookups.remove(&ino);
            }
        }
        self.maybe_free(ino);
    }

    /// Frees a live inode nothing refers to any more (no name, no kernel reference, not open),
    /// and its durable copy too when no durable name refers to it.
    fn maybe_free(&mut self, ino: u64) {
        if ino == ROOT {
            return;
        }
        let unused = self.live.get(&ino).is_some_and(|n| n.names == 0)
            && !self.lookups.contains_key(&ino)
            && !self.opens.contains_key(&ino);
        if unused {
            self.live.remove(&ino);
            self.dirty.remove(&ino);
            self.dirty_dirs.remove(&ino);
            if !self.durably_named(ino) {
                self.durable.remove(&ino);
            }
        }
    }

    fn durably_named(&self, ino: u64) -> bool {
        self.durable.values().any(|n| match &n.body {
            Body::Dir(e) => e.values().any(|c| *c == ino),
            _ => false,
        })
    }

    pub fn setattr(&mut self, ino: u64, s: SetAttr) -> Res<Attr> {
        self.check()?;
        let now = SystemTime::now();
        if let Some(size) = s.size {
            let dirty = self.dirty.entry(ino).or_default();
            let n = self.live.get_mut(&ino).ok_or(libc::ENOENT)?;
            match &mut n.body {
                Body::File(d) => d.truncate(size, dirty),
                Body::Dir(_) => return Err(libc::EISDIR),
                Body::Symlink(_) => return Err(libc::EINVAL),
            }
            n.mtime = now;
            self.stats.truncates += 1;
        }
        let n = self.node_mut(ino)?;
        if let Some(mode) = s.mode {
            n.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = s.uid {
            n.uid = uid;
        }
        if let Some(gid) = s.gid {
            n.gid = gid;
        }
        if let Some(t) = s.atime {
            n.atime = t;
        }
        if let Some(t) = s.mtime {
            n.mtime = t;
        }
        n.ctime = now;
        self.attr(ino)
    }

    /// Makes `name` in `parent`: a file, a directory or a symlink (by `body`).
    pub fn make(
        &mut self,
        parent: u64,
        name: &OsStr,
        body: Body,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Res<Attr> {
        self.check()?;
        if name.len() > 255 {
            return Err(libc::ENAMETOOLONG);
        }
        if dir_entries(self.node(parent)?)?.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.live
            .insert(ino, Node::new(body, perm, uid, gid, parent));
        let now = SystemTime::now();
        let p = self.node_mut(parent)?;
        dir_entries_mut(p)?.insert(name.to_os_string(), ino);
        p.mtime = now;
        p.ctime = now;
        self.dirty_dirs.insert(parent);
        let a = self.attr(ino)?;
        *self.lookups.entry(ino).or_default() += 1;
        Ok(a)
    }

    /// Removes a name: a non-directory (`dir` false) or an empty directory.
    pub fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Res<()> {
        self.check()?;
        let ino = *dir_entries(self.node(parent)?)?
            .get(name)
            .ok_or(libc::ENOENT)?;
        match (&self.node(ino)?.body, dir) {
            (Body::Dir(e), true) if !e.is_empty() => return Err(libc::ENOTEMPTY),
            (Body::Dir(_), true) => {}
            (Body::Dir(_), false) => return Err(libc::EISDIR),
            (_, true) => return Err(libc::ENOTDIR),
            (_, false) => {}
        }
        let now = SystemTime::now();
        let p = self.node_mut(parent)?;
        dir_entries_mut(p)?.remove(name);
        p.mtime = now;
        p.ctime = now;
        self.dirty_dirs.insert(parent);
        let n = self.node_mut(ino)?;
        n.names = n.names.saturating_sub(1);
        n.ctime = now;
        self.stats.unlinks += 1;
        self.maybe_free(ino);
        Ok(())
    }

    /// True when `ino` is `dir` or inside it.
    fn is_within(&self, mut ino: u64, dir: u64) -> bool {
        loop {
            if ino == dir {
                return true;
            }
            if ino == ROOT {
                return false;
            }
            match self.live.get(&ino) {
                Some(n) => ino = n.parent,
                None => return false,
            }
        }
    }

    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Res<()> {
        self.check()?;
        if newname.len() > 255 {
            return Err(libc::ENAMETOOLONG);
        }
        let src = *dir_entries(self.node(parent)?)?
            .get(name)
            .ok_or(libc::ENOENT)?;
        let dst = dir_entries(self.node(newparent)?)?.get(newname).copied();
        let src_is_dir = self.node(src)?.kind() == Kind::Dir;
        if src_is_dir && self.is_within(newparent, src) {
            return Err(libc::EINVAL);
        }
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & !(libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE) != 0 {
            return Err(libc::EINVAL);
        }
        if exchange {
            let dst = dst.ok_or(libc::ENOENT)?;
            if self.node(dst)?.kind() == Kind::Dir && self.is_within(parent, dst) {
                return Err(libc::EINVAL);
            }
            dir_entries_mut(self.node_mut(parent)?)?.insert(name.to_os_string(), dst);
            dir_entries_mut(self.node_mut(newparent)?)?.insert(newname.to_os_string(), src);
            self.node_mut(src)?.parent = newparent;
            self.node_mut(dst)?.parent = parent;
        } else {
            if let Some(dst) = dst {
                if dst == src {
                    return Ok(());
                }
                if flags & libc::RENAME_NOREPLACE != 0 {
                    return Err(libc::EEXIST);
                }
                match (&self.node(dst)?.body, src_is_dir) {
                    (Body::Dir(e), true) if !e.is_empty() => return Err(libc::ENOTEMPTY),
                    (Body::Dir(_), true) => {}
                    (Body::Dir(_), false) => return Err(libc::EISDIR),
                    (_, true) => return Err(libc::ENOTDIR),
                    (_, false) => {}
                }
            }
            dir_entries_mut(self.node_mut(parent)?)?.remove(name);
            dir_entries_mut(self.node_mut(newparent)?)?.insert(newname.to_os_string(), src);
            self.node_mut(src)?.parent = newparent;
            if let Some(dst) = dst {
                let n = self.node_mut(dst)?;
                n.names = n.names.saturating_sub(1);
                self.maybe_free(dst);
            }
        }
        let now = SystemTime::now();
        for d in [parent, newparent] {
            let n = self.node_mut(d)?;
            n.mtime = now;
            n.ctime = now;
            self.dirty_dirs.insert(d);
        }
        self.stats.renames += 1;
        Ok(())
    }

    pub fn readlink(&self, ino: u64) -> Res<OsString> {
        self.check()?;
        match &self.node(ino)?.body {
            Body::Symlink(t) => Ok(t.clone()),
            _ => Err(libc::EINVAL),
        }
    }

    /// Opens `ino`; the handle keeps an unlinked inode alive until released.
    pub fn open(&mut self, ino: u64) -> Res<u64> {
        self.check()?;
        self.node(ino)?;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, ino);
        *self.opens.entry(ino).or_default() += 1;
        Ok(fh)
    }

    pub fn release(&mut self, fh: u64) {
        if let Some(ino) = self.handles.remove(&fh) {
            if let Some(n) = self.opens.get_mut(&ino) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.opens.remove(&ino);
                }
            }
            self.maybe_free(ino);
        }
    }

    fn file(&self, ino: u64) -> Res<&Data> {
        match &self.node(ino)?.body {
            Body::File(d) => Ok(d),
            Body::Dir(_) => Err(libc::EISDIR),
            Body::Symlink(_) => Err(libc::EINVAL),
        }
    }

    pub fn read(&self, ino: u64, off: u64, len: usize) -> Res<Vec<u8>> {
        self.check()?;
        Ok(self.file(ino)?.read(off, len))
    }

    pub fn write(&mut self, ino: u64, off: u64, data: &[u8]) -> Res<u32> {
        self.check()?;
        self.file(ino)?;
        off.checked_add(data.len() as u64).ok_or(libc::EFBIG)?;
        let dirty = self.dirty.entry(ino).or_default();
        let n = self.live.get_mut(&ino).ok_or(libc::ENOENT)?;
        if let Body::File(d) = &mut n.body {
            d.write(off, data, dirty);
        }
        let now = SystemTime::now();
        n.mtime = now;
        n.ctime = now;
        self.stats.writes += 1;
        self.stats.bytes_written += data.len() as u64;
        Ok(data.len() as u32)
    }

    /// `fallocate(2)`: mode 0 and KEEP_SIZE reserve space (which this model does not need,
    /// beyond growing the file for mode 0); PUNCH_HOLE (with KEEP_SIZE) and ZERO_RANGE zero.
    pub fn fallocate(&mut self, ino: u64, off: u64, len: u64, mode: i32) -> Res<()> {
        self.check()?;
        self.file(ino)?;
        let end = off.checked_add(len).ok_or(libc::EFBIG)?;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let rest = mode & !libc::FALLOC_FL_KEEP_SIZE;
        let dirty = self.dirty.entry(ino).or_default();
        let n = self.live.get_mut(&ino).ok_or(libc::ENOENT)?;
        let Body::File(d) = &mut n.body else {
            return Err(libc::EISDIR);
        };
        match rest {
            0 => {}
            libc::FALLOC_FL_PUNCH_HOLE if keep_size => d.zero(off, len, dirty),
            libc::FALLOC_FL_ZERO_RANGE => d.zero(off, len, dirty),
            _ => return Err(libc::EOPNOTSUPP),
        }
        if !keep_size && end > d.size {
            d.truncate(end, dirty);
        }
        self.stats.fallocates += 1;
        Ok(())
    }

    /// `fsync`/`fdatasync` of a file: its data, size and attributes become durable (its name
    /// does not). Of a directory: see [`Self::fsyncdir`].
    pub fn fsync(&mut self, ino: u64) -> Res<()> {
        self.check()?;
        let live = self.node(ino)?;
        if live.kind() == Kind::Dir {
            return self.fsyncdir(ino);
        }
        self.stats.fsyncs += 1;
        let dirty = self.dirty.remove(&ino).unwrap_or_default();
        let live = self.live.get(&ino).ok_or(libc::ENOENT)?;
        match self.durable.get_mut(&ino) {
            None => {
                self.durable.insert(ino, live.clone());
            }
            Some(d) => {
                if let (Body::File(l), Body::File(dd)) = (&live.body, &mut d.body) {
                    sync_pages(l, dd, &dirty, |_| true);
                } else {
                    d.body = live.body.clone();
                }
                let body = std::mem::replace(&mut d.body, Body::Dir(BTreeMap::new()));
                *d = Node {
                    body,
                    ..live.clone_meta()
                };
            }
        }
        Ok(())
    }

    /// `fsync` of a directory: its entries become durable. An entry for an inode the disk
    /// does not hold yet brings that inode without its data.
    pub fn fsyncdir(&mut self, ino: u64) -> Res<()> {
        self.check()?;
        self.stats.dir_fsyncs += 1;
        let live = self.node(ino)?;
        let entries = dir_entries(live)?.clone();
        let meta = live.clone_meta();
        for child in entries.values() {
            if !self.durable.contains_key(child) {
                let skeleton = self.node(*child)?.skeleton();
                self.durable.insert(*child, skeleton);
            }
        }
        let old: Vec<u64> = match self.durable.get(&ino).map(|n| &n.body) {
            Some(Body::Dir(e)) => e.values().copied().collect(),
            _ => Vec::new(),
        };
        self.durable.insert(
            ino,
            Node {
                body: Body::Dir(entries),
                ..meta
            },
        );
        self.dirty_dirs.remove(&ino);
        for o in old {
            if !self.live.contains_key(&o) && !self.durably_named(o) {
                self.durable.remove(&o);
            }
        }
        Ok(())
    }

    /// `.`, `..` and the entries of a live directory.
    pub fn readdir(&self, ino: u64) -> Res<Vec<(u64, Kind, OsString)>> {
        self.check()?;
        let n = self.node(ino)?;
        let entries = dir_entries(n)?;
        let mut out = vec![
            (ino, Kind::Dir, OsString::from(".")),
            (n.parent, Kind::Dir, OsString::from("..")),
        ];
        for (name, child) in entries {
            let kind = self.live.get(child).map_or(Kind::File, Node::kind);
            out.push((*child, kind, name.clone()));
        }
        Ok(out)
    }

    /// `sync(2)`: everything live becomes durable.
    pub fn sync_all(&mut self) {
        self.durable = self.live.clone();
        self.dirty.clear();
        self.dirty_dirs.clear();
    }

    /// True when nothing is unsynced.
    pub fn is_synced(&self) -> bool {
        self.dirty
            .values()
            .all(|d| d.pages.is_empty() && !d.size && d.drop_from.is_none())
            && self.dirty_dirs.is_empty()
    }

    /// The power goes: from now on every request fails, and only the durable tree (plus, with
    /// [`CutMode::Torn`], some unsynced pages) remains, to be [materialized](Self::materialize).
    pub fn cut(&mut self, mode: CutMode) -> CutReport {
        self.frozen = true;
        let mut report = CutReport {
            dirs_unsynced: self.dirty_dirs.len(),
            ..Default::default()
        };
        let mut rng = match mode {
            CutMode::Torn { seed, .. } => Some(Rng(seed)),
            CutMode::Clean => None,
        };
        let keep = match mode {
            CutMode::Torn { keep, .. } => keep,
            CutMode::Clean => 0.0,
        };
        let mut inos: Vec<u64> = self.dirty.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let Some(dirty) = self.dirty.get(&ino) else {
                continue;
            };
            if dirty.pages.is_empty() && !dirty.size && dirty.drop_from.is_none() {
                continue;
            }
            report.files_unsynced += 1;
            report.pages_unsynced += dirty.pages.len();
            let (
                Some(rng),
                Some(Node {
                    body: Body::File(live),
                    ..
                }),
            ) = (rng.as_mut(), self.live.get(&ino))
            else {
                continue;
            };
            let Some(Node {
                body: Body::File(durable),
                ..
            }) = self.durable.get_mut(&ino)
            else {
                continue;
            };
            let mut kept = 0;
            let keep_size = rng.next_f64() < keep;
            sync_pages_partly(live, durable, dirty, keep_size, |_| {
                let k = rng.next_f64() < keep;
                kept += usize::from(k);
                k
            });
            report.pages_kept += kept;
        }
        self.dirty.clear();
        self.dirty_dirs.clear();
        report
    }

    /// The durable tree as paths → contents (directories end in `/`), for tests.
    pub fn durable_listing(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        self.list(ROOT, String::new(), &mut out, &mut HashSet::new());
        out
    }

    fn list(
        &self,
        ino: u64,
        prefix: String,
        out: &mut BTreeMap<String, Vec<u8>>,
        seen: &mut HashSet<u64>,
    ) {
        let Some(Body::Dir(entries)) = self.durable.get(&ino).map(|n| &n.body) else {
            return;
        };
        for (name, child) in entries {
            let path = format!("{prefix}{}", name.to_string_lossy());
            match self.durable.get(child).map(|n| &n.body) {
                Some(Body::File(d)) => {
                    out.insert(path, d.read(0, d.size as usize));
                }
                Some(Body::Dir(_)) if seen.insert(*child) => {
                    out.insert(format!("{path}/"), Vec::new());
                    self.list(*child, format!("{path}/"), out, seen);
                }
                Some(Body::Symlink(t)) => {
                    out.insert(path, t.as_encoded_bytes().to_vec());
                }
                _ => {}
            }
        }
    }
}

/// Copies a file's unsynced pages (those `take` accepts) and its size into the durable copy.
fn sync_pages(live: &Data, durable: &mut Data, dirty: &Dirty, take: impl FnMut(u64) -> bool) {
    sync_pages_partly(live, durable, dirty, true, take)
}

fn sync_pages_partly(
    live: &Data,
    durable: &mut Data,
    dirty: &Dirty,
    with_size: bool,
    mut take: impl FnMut(u64) -> bool,
) {
    if with_size {
        if let Some(from) = dirty.drop_from {
            drop(durable.pages.split_off(&from));
        }
        durable.size = live.size;
    }
    for p in &dirty.pages {
        if !take(*p) {
            continue;
        }
        match live.pages.get(p) {
            Some(page) => {
                durable.pages.insert(*p, page.clone());
            }
            None => {
                durable.pages.remove(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(m: &mut Model, parent: u64, name: &str) -> u64 {
        m.make(
            parent,
            OsStr::new(name),
            Body::File(Data::default()),
            0o644,
            0,
            0,
        )
        .unwrap()
        .ino
    }

    fn dir(m: &mut Model, parent: u64, name: &str) -> u64 {
        m.make(
            parent,
            OsStr::new(name),
            Body::Dir(BTreeMap::new()),
            0o755,
            0,
            0,
        )
        .unwrap()
        .ino
    }

    fn after_cut(m: &mut Model, mode: CutMode) -> BTreeMap<String, Vec<u8>> {
        m.cut(mode);
        m.durable_listing()
    }

    #[test]
    fn unsynced_data_is_lost_and_synced_data_kept() {
        let mut m = Model::empty(0, 0);
        let a = file(&mut m, ROOT, "a");
        let b = file(&mut m, ROOT, "b");
        m.fsyncdir(ROOT).unwrap();
        m.write(a, 0, b"kept").unwrap();
        m.fsync(a).unwrap();
        m.write(a, 4, b" lost").unwrap();
        m.write(b, 0, b"lost").unwrap();
        assert_eq!(m.read(a, 0, 100).unwrap(), b"kept lost");
        let disk = after_cut(&mut m, CutMode::Clean);
        assert_eq!(disk["a"], b"kept");
        assert_eq!(disk["b"], b"");
        assert_eq!(
            m.read(a, 0, 1),
            Err(libc::EIO),
            "no answers after the power went"
        );
    }

    #[test]
    fn a_name_is_durable_only_once_its_directory_is_synced() {
        let mut m = Model::empty(0, 0);
        let a = file(&mut m, ROOT, "a");
        m.write(a, 0, b"data").unwrap();
        m.fsync(a).unwrap();
        // fsync of the file alone: the inode's data is on disk, but no name reaches it.
        let mut m2 = Model::empty(0, 0);
        std::mem::swap(&mut m, &mut m2);
        assert!(after_cut(&mut m2, CutMode::Clean).is_empty());

        let a = file(&mut m, ROOT, "a");
        m.write(a, 0, b"data").unwrap();
        m.fsyncdir(ROOT).unwrap();
        // The name is durable; the data, never synced, is not.
        assert_eq!(after_cut(&mut m, CutMode::Clean)["a"], b"");
    }

    #[test]
    fn rename_unlink_and_truncate_follow_the_syncs() {
        let mut m = Model::empty(0, 0);
        let d = dir(&mut m, ROOT, "d");
        let old = file(&mut m, d, "old");
        m.write(old, 0, b"old contents").unwrap();
        m.fsync(old).unwrap();
        m.fsyncdir(d).unwrap();
        m.fsyncdir(ROOT).unwrap();

        // temp + fsync + rename, but no fsync of the directory: the old name stays.
        let tmp = file(&mut m, d, "new.tmp");
        m.write(tmp, 0, b"new contents").unwrap();
        m.fsync(tmp).unwrap();
        m.rename(d, OsStr::new("new.tmp"), d, OsStr::new("old"), 0)
            .unwrap();
        m.setattr(
            tmp,
            SetAttr {
                size: Some(3),
                ..Default::default()
            },
        )
        .unwrap();
        let mut copy = Model::empty(0, 0);
        copy.durable = m.durable.clone();
        copy.live = m.live.clone();
        let disk = after_cut(&mut copy, CutMode::Clean);
        assert_eq!(disk["d/old"], b"old contents");
        assert!(!disk.contains_key("d/new.tmp"));

        // With the directory synced: the new file under the old name, its untruncated data
        // (the truncate was not synced).
        m.fsyncdir(d).unwrap();
        let disk = after_cut(&mut m, CutMode::Clean);
        assert_eq!(disk["d/old"], b"new contents");
        assert_eq!(disk.len(), 2, "{disk:?}");
    }

    #[test]
    fn an_unlinked_file_stays_on_disk_until_its_directory_is_synced() {
        let mut m = Model::empty(0, 0);
        let a = file(&mut m, ROOT, "a");
        m.write(a, 0, b"x").unwrap();
        m.fsync(a).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.forget(a, 1);
        m.remove(ROOT, OsStr::new("a"), false).unwrap();
        assert_eq!(m.lookup(ROOT, OsStr::new("a")).err(), Some(libc::ENOENT));
        let mut copy = Model::empty(0, 0);
        copy.durable = m.durable.clone();
        assert_eq!(after_cut(&mut copy, CutMode::Clean)["a"], b"x");
        m.fsyncdir(ROOT).unwrap();
        assert!(after_cut(&mut m, CutMode::Clean).is_empty());
    }

    #[test]
    fn truncation_and_holes_reach_the_disk_on_fsync() {
        let mut m = Model::empty(0, 0);
        let a = file(&mut m, ROOT, "a");
        m.fsyncdir(ROOT).unwrap();
        m.write(a, 0, &[7u8; 3 * PAGE]).unwrap();
        m.fsync(a).unwrap();
        m.setattr(
            a,
            SetAttr {
                size: Some(10),
                ..Default::default()
            },
        )
        .unwrap();
        m.write(a, 2 * PAGE64, b"z").unwrap();
        m.fsync(a).unwrap();
        let disk = after_cut(&mut m, CutMode::Clean);
        let mut want = vec![7u8; 10];
        want.resize(2 * PAGE, 0);
        want.push(b'z');
        assert_eq!(disk["a"], want);
    }

    #[test]
    fn fallocate_grows_or_zeroes() {
        let mut m = Model::empty(0, 0);
        let a = file(&mut m, ROOT, "a");
        m.write(a, 0, &[1u8; 100]).unwrap();
        m.fallocate(a, 0, 8192, 0).unwrap();
        assert_eq!(m.attr(a).unwrap().size, 8192);
        m.fallocate(a, 0, 1 << 20, libc::FALLOC_FL_KEEP_SIZE)
            .unwrap();
        assert_eq!(m.attr(a).unwrap().size, 8192);
        m.fallocate(
            a,
            10,
            10,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        )
        .unwrap();
        let bytes = m.read(a, 0, 30).unwrap();
        assert_eq!(&bytes[..10], &[1u8; 10]);
        assert_eq!(&bytes[10..20], &[0u8; 10]);
        assert_eq!(&bytes[20..30], &[1u8; 10]);
    }

    #[test]
    fn a_torn_cut_keeps_a_seeded_part_of_the_unsynced_pages() {
        let run = |seed| {
            let mut m = Model::empty(0, 0);
            let a = file(&mut m, ROOT, "a");
            m.fsyncdir(ROOT).unwrap();
            m.write(a, 0, &[0u8; 64 * PAGE]).unwrap();
            m.fsync(a).unwrap();
            for p in 0..64u64 {
                m.write(a, p * PAGE64, &[1u8; PAGE]).unwrap();
            }
            let report = m.cut(CutMode::Torn { seed, keep: 0.5 });
            (report, m.durable_listing()["a"].clone())
        };
        let (r1, d1) = run(7);
        let (r2, d2) = run(7);
        assert_eq!((&r1, &d1), (&r2, &d2), "the same seed tears the same way");
        assert_eq!(r1.pages_unsynced, 64);
        assert!(r1.pages_kept > 10 && r1.pages_kept < 54, "{r1:?}");
        let ones = d1.chunks(PAGE).filter(|p| p[0] == 1).count();
        assert_eq!(ones, r1.pages_kept);
    }

    #[test]
    fn load_and_materialize_round_trip() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("d")).unwrap();
        std::fs::write(src.path().join("d/f"), b"hello").unwrap();
        std::fs::write(src.path().join("big"), vec![3u8; 3 * PAGE + 5]).unwrap();
        std::os::unix::fs::symlink("d/f", src.path().join("link")).unwrap();
        let m = Model::load(src.path()).unwrap();
        let out = tempfile::tempdir().unwrap();
        std::fs::write(out.path().join("stale"), b"gone").unwrap();
        m.materialize(out.path()).unwrap();
        assert_eq!(std::fs::read(out.path().join("d/f")).unwrap(), b"hello");
        assert_eq!(
            std::fs::read(out.path().join("big")).unwrap(),
            vec![3u8; 3 * PAGE + 5]
        );
        assert_eq!(
            std::fs::read_link(out.path().join("link")).unwrap(),
            Path::new("d/f")
        );
        assert!(!out.path().join("stale").exists());
    }

    #[test]
    fn renaming_a_directory_into_itself_is_refused() {
        let mut m = Model::empty(0, 0);
        let a = dir(&mut m, ROOT, "a");
        let b = dir(&mut m, a, "b");
        assert_eq!(
            m.rename(ROOT, OsStr::new("a"), b, OsStr::new("x"), 0),
            Err(libc::EINVAL)
        );
        assert_eq!(m.remove(ROOT, OsStr::new("a"), true), Err(libc::ENOTEMPTY));
        m.remove(a, OsStr::new("b"), true).unwrap();
        m.remove(ROOT, OsStr::new("a"), true).unwrap();
    }
}
