//! lossyfs through the kernel: real system calls on a mount, a power cut, and what the backing
//! directory holds afterwards. Skipped (with a message) where FUSE cannot be mounted.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use lossyfs::{CutMode, LossyFs};

struct Env {
    // Dropped in field order: the mount goes before its directories.
    fs: LossyFs,
    _dirs: tempfile::TempDir,
}

fn mount() -> Option<Env> {
    if let Err(why) = lossyfs::available() {
        eprintln!("skipped: {why}");
        return None;
    }
    lossyfs::sweep_stale_mounts();
    let dirs = tempfile::tempdir().unwrap();
    std::fs::create_dir(dirs.path().join("backing")).unwrap();
    std::fs::create_dir(dirs.path().join("mnt")).unwrap();
    let fs = LossyFs::mount(dirs.path().join("backing"), dirs.path().join("mnt")).unwrap();
    Some(Env { fs, _dirs: dirs })
}

fn fsync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

fn read(p: &Path) -> Option<Vec<u8>> {
    std::fs::read(p).ok()
}

#[test]
fn written_but_not_synced_is_gone_after_a_cut() {
    let Some(mut env) = mount() else { return };
    let mnt = env.fs.mountpoint().to_path_buf();
    let mut f = File::create(mnt.join("a")).unwrap();
    fsync_dir(&mnt);
    f.write_all(b"never synced").unwrap();
    drop(f);
    assert_eq!(read(&mnt.join("a")).unwrap(), b"never synced");
    let report = env.fs.power_cut(CutMode::Clean).unwrap();
    assert_eq!(report.files_unsynced, 1, "{report:?}");
    assert_eq!(
        read(&mnt.join("a")).unwrap(),
        b"",
        "the name was synced, the data not"
    );
    assert_eq!(read(&env.fs.backing().join("a")).unwrap(), b"");
}

#[test]
fn written_and_fsynced_survives_a_cut() {
    let Some(mut env) = mount() else { return };
    let mnt = env.fs.mountpoint().to_path_buf();
    let mut f = File::create(mnt.join("a")).unwrap();
    f.write_all(b"hello ").unwrap();
    f.sync_all().unwrap();
    f.write_all(b"world").unwrap();
    f.sync_data().unwrap();
    f.write_all(b" and more").unwrap();
    drop(f);
    fsync_dir(&mnt);
    env.fs.power_cut(CutMode::Clean).unwrap();
    assert_eq!(read(&mnt.join("a")).unwrap(), b"hello world");
    assert_eq!(read(&env.fs.backing().join("a")).unwrap(), b"hello world");
}

#[test]
fn a_new_file_without_a_directory_fsync_is_gone() {
    let Some(mut env) = mount() else { return };
    let mnt = env.fs.mountpoint().to_path_buf();
    let mut f = File::create(mnt.join("orphan")).unwrap();
    f.write_all(b"data").unwrap();
    f.sync_all().unwrap();
    drop(f);
    env.fs.power_cut(CutMode::Clean).unwrap();
    assert!(read(&mnt.join("orphan")).is_none());
    assert!(!env.fs.backing().join("orphan").exists());
}

#[test]
fn rename_without_a_directory_fsync_leaves_the_old_name() {
    let Some(mut env) = mount() else { return };
    let mnt = env.fs.mountpoint().to_path_buf();
    std::fs::write(mnt.join("live"), b"old").unwrap();
    File::open(mnt.join("live")).unwrap().sync_all().unwrap();
    fsync_dir(&mnt);
    // The classic atomic replace, minus the directory fsync.
    let mut t = File::create(mnt.join("live.tmp")).unwrap();
    t.write_all(b"new").unwrap();
    t.sync_all().unwrap();
    drop(t);
    std::fs::rename(mnt.join("live.tmp"), mnt.join("live")).unwrap();
    assert_eq!(read(&mnt.join("live")).unwrap(), b"new");
    env.fs.power_cut(CutMode::Clean).unwrap();
    assert_eq!(read(&mnt.join("live")).unwrap(), b"old");
    assert!(read(&mnt.join("live.tmp")).is_none());

    // With it, the new contents under the old name.
    let mut t = File::create(mnt.join("live.tmp")).unwrap();
    t.write_all(b"new").unwrap();
    t.sync_all().unwrap();
    drop(t);
    std::fs::rename(mnt.join("live.tmp"), mnt.join("live")).unwrap();
    fsync_dir(&mnt);
    env.fs.power_cut(CutMode::Clean).unwrap();
    assert_eq!(read(&mnt.join("live")).unwrap(), b"new");
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 1);
}

#[test]
fn unlink_without_a_directory_fsync_comes_back() {
    let Some(mut env) = mount() else { return };
    let mnt = env.fs.mountpoint().to_path_buf();
    std::fs::write(mnt.join("f"), b"x").unwrap();
    File::open(mnt.join("f")).unwrap().sync_all().unwrap();
    fsync_dir(&mnt);
    std::fs::remove_file(mnt.join("f")).unwrap();
    env.fs.power_cut(CutMode::Clean).unwrap();
    assert_eq!(read(&mnt.join("f")).unwrap(), b"x");
    std::fs::remove_file(mnt.join("f")).unwrap();
    fsync_dir(&mnt);
    env.fs.power_cut(CutMode::Clean).unwrap();
    assert!(read(&mnt.join("f")).is_none());
}

#[test]
fn sync_file_range_makes_nothing_durable() {
    let Some(mut env) = mount() else { return };
    let mnt = env.fs.mountpoint().to_path_buf();
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(mnt.join("log"))
        .unwrap();
    fsync_dir(&mnt);
    f.write_all_at(b"record", 0).unwrap();
    // What sled 0.34's flush does (iobuf.rs): write, then sync_file_range(WAIT_BEFORE |
    // WRITE | WAIT_AFTER). FUSE never sees it: it returns 0 and the data stays unsynced.
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a valid open descriptor and a plain range.
    let rc = unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 6, flags) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    assert!(!env.fs.is_synced());
    drop(f);
    env.fs.power_cut(CutMode::Clean).unwrap();
    assert_eq!(read(&mnt.join("log")).unwrap(), b"");
}

#[test]
fn offsets_truncate_and_fallocate_reach_the_disk_on_fsync() {
    let Some(mut env) = mount() else { return };
    let mnt = env.fs.mountpoint().to_path_buf();
    std::fs::create_dir_all(mnt.join("d/e")).unwrap();
    fsync_dir(&mnt);
    fsync_dir(&mnt.join("d"));
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(mnt.join("d/e/f"))
        .unwrap();
    fsync_dir(&mnt.join("d/e"));
    f.write_all_at(&[1u8; 10_000], 0).unwrap();
    f.write_all_at(b"tail", 20_000).unwrap();
    f.set_len(15_000).unwrap();
    // SAFETY: a valid open descriptor; mode 0 grows the file to 32 KiB.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 32_768) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    f.sync_data().unwrap();
    f.write_all_at(b"unsynced", 0).unwrap();
    let mut buf = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut buf).unwrap();
    assert_eq!(&buf[..8], b"unsynced");
    drop(f);
    env.fs.power_cut(CutMode::Clean).unwrap();
    let got = read(&mnt.join("d/e/f")).unwrap();
    let mut want = vec![1u8; 10_000];
    want.resize(32_768, 0);
    assert_eq!(got, want);
}

#[test]
fn a_clean_unmount_keeps_everything() {
    let Some(env) = mount() else { return };
    let mnt = env.fs.mountpoint().to_path_buf();
    let backing = env.fs.backing().to_path_buf();
    std::fs::create_dir(mnt.join("d")).unwrap();
    std::fs::write(mnt.join("d/f"), b"unsynced but clean").unwrap();
    let Env { fs, _dirs } = env;
    fs.unmount().unwrap();
    assert_eq!(read(&backing.join("d/f")).unwrap(), b"unsynced but clean");
}

#[test]
fn files_locks_and_listing_behave_as_on_a_disk() {
    let Some(env) = mount() else { return };
    let mnt = env.fs.mountpoint().to_path_buf();
    let f = File::create(mnt.join("lock")).unwrap();
    // SAFETY: a valid descriptor.
    assert_eq!(
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let g = File::open(mnt.join("lock")).unwrap();
    // SAFETY: a valid descriptor.
    assert_ne!(
        unsafe { libc::flock(g.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    for i in 0..50 {
        std::fs::write(mnt.join(format!("f{i:02}")), b"x").unwrap();
    }
    let n = std::fs::read_dir(&mnt).unwrap().count();
    assert_eq!(n, 51);
    assert!(std::fs::rename(mnt.join("f00"), mnt.join("f01")).is_ok());
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 50);
    std::fs::create_dir(mnt.join("sub")).unwrap();
    assert!(std::fs::remove_dir(&mnt).is_err());
    std::os::unix::fs::symlink("f01", mnt.join("ln")).unwrap();
    assert_eq!(read(&mnt.join("ln")).unwrap(), b"x");
}

/// A cut must come back even when the mount is busy: a process killed just before it (as the
/// power-loss tests do), and one still holding a file open with its working directory on the
/// mount. The first power-loss runs hung here; the cut now aborts the old connection.
#[test]
fn a_cut_returns_while_processes_hold_files_on_the_mount() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let Some(mut env) = mount() else { return };
    let mnt = env.fs.mountpoint().to_path_buf();
    std::fs::write(mnt.join("held"), b"kept").unwrap();
    File::open(mnt.join("held")).unwrap().sync_all().unwrap();
    fsync_dir(&mnt);
    /// Killed and reaped when dropped, also when an assertion fails first.
    struct Holder(std::process::Child);
    impl Drop for Holder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let holder = |mode: &str| {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec 3{mode}held; echo ready; exec sleep 600"))
            .current_dir(&mnt)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Holder(child)
    };
    drop(holder(">>"));
    let alive = holder("<");

    env.fs.power_cut(CutMode::Clean).unwrap();
    assert_eq!(read(&mnt.join("held")).unwrap(), b"kept");
    std::fs::write(mnt.join("after"), b"new mount works").unwrap();
    assert_eq!(read(&mnt.join("after")).unwrap(), b"new mount works");

    drop(alive);
    env.fs.power_cut(CutMode::Clean).unwrap();
    assert_eq!(read(&mnt.join("held")).unwrap(), b"kept");
}
