//! Unit tests of cgroup.rs: v1/v2 decisions against a recording fake, then
//! real cgroups on this host.

use super::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A cgroup file system in memory that records every change.
#[derive(Default)]
struct Fake {
    files: Mutex<BTreeMap<PathBuf, String>>,
    dirs: Mutex<BTreeSet<PathBuf>>,
    /// File names every directory has, besides cgroup.procs.
    present: BTreeSet<&'static str>,
    /// errno for a write or mkdir at this path.
    fail: BTreeMap<PathBuf, i32>,
    ops: Mutex<Vec<String>>,
    pid: u32,
}

impl Fake {
    fn new(proc_cgroup: &str, mountinfo: &str, files: &[(&str, &str)], present: &[&'static str]) -> Fake {
        let mut map: BTreeMap<PathBuf, String> = files.iter().map(|(p, c)| (PathBuf::from(p), c.to_string())).collect();
        map.insert("/proc/self/cgroup".into(), proc_cgroup.into());
        map.insert("/proc/self/mountinfo".into(), mountinfo.into());
        map.insert("/proc/swaps".into(), "Filename\tType\tSize\tUsed\tPriority\n".into());
        Fake { files: Mutex::new(map), present: present.iter().copied().collect(), pid: 100, ..Fake::default() }
    }
    fn ops(&self) -> Vec<String> {
        self.ops.lock().unwrap().clone()
    }
    fn writes(&self) -> Vec<String> {
        self.ops().into_iter().filter(|o| o.starts_with("write ")).collect()
    }
    fn set(&self, path: &str, content: &str) {
        self.files.lock().unwrap().insert(path.into(), content.into());
    }
}

impl CgroupFs for Arc<Fake> {
    fn read(&self, path: &Path) -> io::Result<String> {
        self.files.lock().unwrap().get(path).cloned().ok_or_else(|| io::ErrorKind::NotFound.into())
    }
    fn write(&self, path: &Path, data: &str) -> io::Result<()> {
        if let Some(e) = self.fail.get(path) {
            return Err(io::Error::from_raw_os_error(*e));
        }
        self.ops.lock().unwrap().push(format!("write {} {data}", path.display()));
        let mut files = self.files.lock().unwrap();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let dir = path.parent().expect("a file in a directory");
        match name {
            "cgroup.procs" => files.entry(path.into()).or_default().push_str(&format!("{data}\n")),
            "cgroup.kill" => {
                // Killed processes leave every hierarchy.
                let dead = pids_in(files.get(&dir.join("cgroup.procs")).map(String::as_str).unwrap_or_default());
                for (p, c) in files.iter_mut() {
                    if p.ends_with("cgroup.procs") {
                        *c = pids_in(c).into_iter().filter(|x| !dead.contains(x)).map(|x| format!("{x}\n")).collect();
                    }
                }
            }
            _ => {
                files.insert(path.into(), data.into());
            }
        }
        Ok(())
    }
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        if let Some(e) = self.fail.get(path) {
            return Err(io::Error::from_raw_os_error(*e));
        }
        if !self.dirs.lock().unwrap().insert(path.into()) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        self.files.lock().unwrap().insert(path.join("cgroup.procs"), String::new());
        self.ops.lock().unwrap().push(format!("mkdir {}", path.display()));
        Ok(())
    }
    fn rmdir(&self, path: &Path) -> io::Result<()> {
        // As the kernel: a cgroup with a process in it is busy.
        let procs = self.files.lock().unwrap().get(&path.join("cgroup.procs")).cloned().unwrap_or_default();
        if !pids_in(&procs).is_empty() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        self.dirs.lock().unwrap().remove(path);
        self.files.lock().unwrap().retain(|p, _| !p.starts_with(path));
        self.ops.lock().unwrap().push(format!("rmdir {}", path.display()));
        Ok(())
    }
    fn exists(&self, path: &Path) -> bool {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let in_dir = path.parent().is_some_and(|d| self.dirs.lock().unwrap().contains(d));
        self.files.lock().unwrap().contains_key(path) || (in_dir && self.present.contains(name))
    }
    fn kill(&self, pid: i32) -> io::Result<()> {
        self.ops.lock().unwrap().push(format!("kill {pid}"));
        for (p, c) in self.files.lock().unwrap().iter_mut() {
            if p.ends_with("cgroup.procs") {
                *c = pids_in(c).into_iter().filter(|x| *x != pid).map(|x| format!("{x}\n")).collect();
            }
        }
        Ok(())
    }
    fn own_pid(&self) -> u32 {
        self.pid
    }
    fn sleep(&self, _: Duration) {}
}

const V2_MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";
const V2_SCOPE: &str = "/sys/fs/cgroup/user.slice/app.slice/run-u1.scope";
/// This development host: v1 controllers plus an empty unified hierarchy.
const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
6:freezer:/
4:memory:/process_api/bb51
2:cpuacct:/
1:cpu:/
0::/
";
const LIMITS: Limits = Limits { pids_max: 100, memory_max: 512 << 20, cpus: 2 };

fn v2_fake(own: &str, controllers: &str, subtree: &str, procs: &str) -> Arc<Fake> {
    let base = V2_SCOPE;
    Arc::new(Fake::new(
        &format!("0::{own}\n"),
        V2_MOUNTINFO,
        &[
            (&format!("{base}/cgroup.controllers"), controllers),
            (&format!("{base}/cgroup.subtree_control"), subtree),
            (&format!("{base}/cgroup.procs"), procs),
        ],
        &["memory.swap.max", "cgroup.kill", "cgroup.freeze"],
    ))
}

fn create(fs: &Arc<Fake>, limits: &Limits) -> (Option<SandboxCgroup<Arc<Fake>>>, Vec<Layer>) {
    SandboxCgroup::create_with(fs.clone(), "cordon-abc", limits)
}

fn layer<'a>(layers: &'a [Layer], name: &str) -> &'a Layer {
    layers.iter().find(|l| l.name == name).expect("layer present")
}

#[test]
fn test_create_v2_moves_itself_out_then_delegates() {
    let fs = v2_fake("/user.slice/app.slice/run-u1.scope", "cpuset cpu io memory pids", "", "100\n");
    let (cg, layers) = create(&fs, &LIMITS);
    assert!(cg.is_some());
    let s = V2_SCOPE;
    assert_eq!(
        fs.ops(),
        [
            format!("mkdir {s}/cordon-runner"),
            format!("write {s}/cordon-runner/cgroup.procs 100"),
            format!("write {s}/cgroup.subtree_control +pids"),
            format!("write {s}/cgroup.subtree_control +memory"),
            format!("write {s}/cgroup.subtree_control +cpu"),
            format!("mkdir {s}/cordon-abc"),
            format!("write {s}/cordon-abc/pids.max 100"),
            format!("write {s}/cordon-abc/memory.max {}", 512u64 << 20),
            format!("write {s}/cordon-abc/memory.swap.max 0"),
            format!("write {s}/cordon-abc/cpu.max 200000 100000"),
        ]
    );
    assert!(layers.iter().all(|l| l.enforced && l.detail.starts_with("v2")), "{layers:?}");
    assert!(layer(&layers, LAYER_MEMORY).detail.contains("no swap"));
}

#[test]
fn test_create_v2_from_the_runner_leaf_uses_its_parent() {
    let fs = v2_fake("/user.slice/app.slice/run-u1.scope/cordon-runner", "cpu memory pids", "cpu memory pids", "");
    let (_cg, layers) = create(&fs, &LIMITS);
    let s = V2_SCOPE;
    assert_eq!(fs.ops()[0], format!("mkdir {s}/cordon-abc"));
    assert!(!fs.ops().iter().any(|o| o.contains("subtree_control") || o.contains("cordon-runner")));
    assert!(layers.iter().all(|l| l.enforced), "{layers:?}");
}

#[test]
fn test_create_v2_other_processes_block_limits_but_keep_kill() {
    let fs = v2_fake("/user.slice/app.slice/run-u1.scope", "cpu memory pids", "", "100\n4242\n");
    let (cg, layers) = create(&fs, &LIMITS);
    assert_eq!(fs.ops(), [format!("mkdir {V2_SCOPE}/cordon-abc")]);
    for l in &layers {
        assert!(!l.enforced && l.detail.contains("4242") && l.detail.contains("Delegate=yes"), "{l:?}");
    }
    // Still a cgroup: the sandbox can be killed as a whole.
    let cg = cg.expect("a v2 directory for cgroup.kill");
    assert_eq!(cg.dirs(), [Path::new(&format!("{V2_SCOPE}/cordon-abc"))]);
}

#[test]
fn test_create_v2_unwritable_cgroup_says_how_to_delegate() {
    let mut fake = Fake::new(
        "0::/user.slice/app.slice/run-u1.scope\n",
        V2_MOUNTINFO,
        &[
            (&format!("{V2_SCOPE}/cgroup.controllers"), "cpu memory pids"),
            (&format!("{V2_SCOPE}/cgroup.procs"), "100\n"),
        ],
        &[],
    );
    fake.fail.insert(format!("{V2_SCOPE}/cordon-runner").into(), libc::EACCES);
    fake.fail.insert(format!("{V2_SCOPE}/cordon-abc").into(), libc::EACCES);
    let fs = Arc::new(fake);
    let (cg, layers) = create(&fs, &LIMITS);
    assert!(cg.is_none());
    for l in &layers {
        assert!(!l.enforced && l.detail.contains("cordon-runner") && l.detail.contains("Delegate=yes"), "{l:?}");
    }
}

#[test]
fn test_create_v2_undelegated_controller_is_reported() {
    let fs = v2_fake("/user.slice/app.slice/run-u1.scope", "memory pids", "memory pids", "");
    let (_cg, layers) = create(&fs, &LIMITS);
    let cpu = layer(&layers, LAYER_CPU);
    assert!(!cpu.enforced && cpu.detail.contains("lists no cpu"), "{cpu:?}");
    assert!(layer(&layers, LAYER_PIDS).enforced && layer(&layers, LAYER_MEMORY).enforced);
}

#[test]
fn test_create_v2_zero_limits_mean_max() {
    let fs = v2_fake("/user.slice/app.slice/run-u1.scope", "cpu memory pids", "cpu memory pids", "");
    let (_cg, layers) = create(&fs, &Limits { pids_max: 0, memory_max: 0, cpus: 0 });
    let s = V2_SCOPE;
    assert_eq!(
        fs.writes()[..3],
        [
            format!("write {s}/cordon-abc/pids.max max"),
            format!("write {s}/cordon-abc/memory.max max"),
            format!("write {s}/cordon-abc/memory.swap.max 0"),
        ]
    );
    assert_eq!(fs.writes()[3], format!("write {s}/cordon-abc/cpu.max max 100000"));
    assert!(layer(&layers, LAYER_CPU).detail.contains("no limit"));
}

#[test]
fn test_create_hybrid_v1_writes_each_hierarchy() {
    let fs = Arc::new(Fake::new(HYBRID_CGROUP, HYBRID_MOUNTINFO, &[], &["memory.memsw.limit_in_bytes", "cgroup.kill"]));
    let (cg, layers) = create(&fs, &LIMITS);
    let mem = 512u64 << 20;
    assert_eq!(
        fs.ops(),
        [
            "mkdir /sys/fs/cgroup/pids/cordon-abc".to_string(),
            "mkdir /sys/fs/cgroup/memory/process_api/bb51/cordon-abc".to_string(),
            "mkdir /sys/fs/cgroup/cpu/cordon-abc".to_string(),
            "mkdir /sys/fs/cgroup/freezer/cordon-abc".to_string(),
            // The unified hierarchy holds no controller here: only a
            // directory (for cgroup.kill), no subtree_control.
            "mkdir /sys/fs/cgroup/unified/cordon-abc".to_string(),
            "write /sys/fs/cgroup/pids/cordon-abc/pids.max 100".to_string(),
            format!("write /sys/fs/cgroup/memory/process_api/bb51/cordon-abc/memory.limit_in_bytes {mem}"),
            format!("write /sys/fs/cgroup/memory/process_api/bb51/cordon-abc/memory.memsw.limit_in_bytes {mem}"),
            "write /sys/fs/cgroup/cpu/cordon-abc/cpu.cfs_period_us 100000".to_string(),
            "write /sys/fs/cgroup/cpu/cordon-abc/cpu.cfs_quota_us 200000".to_string(),
        ]
    );
    assert!(layers.iter().all(|l| l.enforced && l.detail.starts_with("v1")), "{layers:?}");
    assert_eq!(cg.expect("created").dirs().len(), 5);
}

#[test]
fn test_create_v1_without_memsw_says_swap_is_not_limited() {
    let fs = Arc::new(Fake::new(HYBRID_CGROUP, HYBRID_MOUNTINFO, &[], &[]));
    fs.set("/proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n/swapfile file 1024 0 -2\n");
    let (_cg, layers) = create(&fs, &LIMITS);
    let m = layer(&layers, LAYER_MEMORY);
    assert!(m.enforced && m.detail.contains("swap NOT limited"), "{m:?}");
    assert!(fs.writes().iter().any(|w| w.ends_with("memory.swappiness 0")));
}

#[test]
fn test_create_v1_comounted_cpu_cpuacct() {
    let mi = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
    let fs = Arc::new(Fake::new("2:cpu,cpuacct:/ci/job\n", mi, &[], &[]));
    let (_cg, layers) = create(&fs, &LIMITS);
    assert_eq!(fs.ops()[0], "mkdir /sys/fs/cgroup/cpu,cpuacct/ci/job/cordon-abc");
    assert!(layer(&layers, LAYER_CPU).enforced);
    let pids = layer(&layers, LAYER_PIDS);
    assert!(!pids.enforced && pids.detail.contains("no such cgroup controller"), "{pids:?}");
}

#[test]
fn test_create_failed_mkdir_is_reported_per_controller() {
    let mut fake = Fake::new(HYBRID_CGROUP, HYBRID_MOUNTINFO, &[], &[]);
    fake.fail.insert("/sys/fs/cgroup/pids/cordon-abc".into(), libc::EACCES);
    let fs = Arc::new(fake);
    let (cg, layers) = create(&fs, &LIMITS);
    let pids = layer(&layers, LAYER_PIDS);
    assert!(!pids.enforced && pids.detail.contains("creating /sys/fs/cgroup/pids/cordon-abc"), "{pids:?}");
    assert!(layer(&layers, LAYER_MEMORY).enforced && layer(&layers, LAYER_CPU).enforced);
    assert!(cg.is_some());
}

#[test]
fn test_create_rejects_names_that_are_not_one_component() {
    for bad in ["", ".", "..", "a/b", RUNNER_LEAF] {
        let fs = Arc::new(Fake::new(HYBRID_CGROUP, HYBRID_MOUNTINFO, &[], &[]));
        let (cg, layers) = SandboxCgroup::create_with(fs.clone(), bad, &LIMITS);
        assert!(cg.is_none() && layers.iter().all(|l| !l.enforced), "{bad:?}");
        assert!(fs.ops().is_empty());
    }
}

#[test]
fn test_add_writes_every_directory() {
    let fs = Arc::new(Fake::new(HYBRID_CGROUP, HYBRID_MOUNTINFO, &[], &[]));
    let cg = create(&fs, &LIMITS).0.expect("created");
    let before = fs.ops().len();
    cg.add(4321).unwrap();
    let added: Vec<String> = fs.ops()[before..].to_vec();
    assert_eq!(added.len(), 5);
    assert!(added.iter().all(|o| o.ends_with("/cgroup.procs 4321")), "{added:?}");
    assert!(added[0].contains("/unified/"));
}

#[test]
fn test_kill_all_v2_uses_cgroup_kill() {
    let fs = v2_fake("/user.slice/app.slice/run-u1.scope", "cpu memory pids", "cpu memory pids", "");
    let cg = create(&fs, &LIMITS).0.expect("created");
    cg.add(7).unwrap();
    let before = fs.ops().len();
    cg.kill_all();
    assert_eq!(fs.ops()[before..], [format!("write {V2_SCOPE}/cordon-abc/cgroup.kill 1")]);
    assert!(cg.members().is_empty());
}

#[test]
fn test_kill_all_v1_freezes_kills_each_then_thaws() {
    let v1_only: String =
        HYBRID_MOUNTINFO.lines().filter(|l| !l.contains("cgroup2")).map(|l| format!("{l}\n")).collect();
    let fs = Arc::new(Fake::new(HYBRID_CGROUP, &v1_only, &[], &[]));
    let cg = create(&fs, &LIMITS).0.expect("created");
    cg.add(7).unwrap();
    cg.add(8).unwrap();
    let before = fs.ops().len();
    cg.kill_all();
    assert_eq!(
        fs.ops()[before..],
        [
            "write /sys/fs/cgroup/freezer/cordon-abc/freezer.state FROZEN",
            "kill 7",
            "kill 8",
            "write /sys/fs/cgroup/freezer/cordon-abc/freezer.state THAWED",
        ]
    );
    assert!(cg.members().is_empty());
}

#[test]
fn test_drop_kills_then_removes_every_directory() {
    let fs = Arc::new(Fake::new(HYBRID_CGROUP, HYBRID_MOUNTINFO, &[], &["cgroup.kill"]));
    let cg = create(&fs, &LIMITS).0.expect("created");
    cg.add(9).unwrap();
    let dirs: Vec<PathBuf> = cg.dirs().into_iter().map(Path::to_path_buf).collect();
    let before = fs.ops().len();
    drop(cg);
    let after = fs.ops()[before..].to_vec();
    assert_eq!(after[0], "write /sys/fs/cgroup/unified/cordon-abc/cgroup.kill 1");
    let removed: Vec<String> = dirs.iter().map(|d| format!("rmdir {}", d.display())).collect();
    assert_eq!(after[1..], removed[..]);
}

/// The usual end: nothing left in it, so it is removed without a kill.
#[test]
fn test_drop_of_an_empty_cgroup_only_removes_it() {
    let fs = Arc::new(Fake::new(HYBRID_CGROUP, HYBRID_MOUNTINFO, &[], &["cgroup.kill"]));
    let cg = create(&fs, &LIMITS).0.expect("created");
    let dirs: Vec<PathBuf> = cg.dirs().into_iter().map(Path::to_path_buf).collect();
    let before = fs.ops().len();
    drop(cg);
    let removed: Vec<String> = dirs.iter().map(|d| format!("rmdir {}", d.display())).collect();
    assert_eq!(fs.ops()[before..], removed[..]);
}

#[test]
fn test_oom_kills_reads_v1_and_v2() {
    let fs = Arc::new(Fake::new(HYBRID_CGROUP, HYBRID_MOUNTINFO, &[], &[]));
    let cg = create(&fs, &LIMITS).0.expect("created");
    assert_eq!(cg.oom_kills(), 0);
    fs.set(
        "/sys/fs/cgroup/memory/process_api/bb51/cordon-abc/memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    );
    assert_eq!(cg.oom_kills(), 3);
    let fs = v2_fake("/user.slice/app.slice/run-u1.scope", "cpu memory pids", "cpu memory pids", "");
    let cg = create(&fs, &LIMITS).0.expect("created");
    fs.set(
        &format!("{V2_SCOPE}/cordon-abc/memory.events"),
        "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\noom_group_kill 0\n",
    );
    assert_eq!(cg.oom_kills(), 2);
}

#[test]
fn test_locate_with_mount_roots_and_escapes() {
    // A cgroup namespace shows its own root; a mount point with a space.
    let mi = "41 31 0:38 /ns /sys/fs/cgroup\\040x rw - cgroup2 cgroup2 rw\n";
    let got = locate("0::/ns/job\n", mi);
    assert_eq!(got.v2, Some(PathBuf::from("/sys/fs/cgroup x/job")));
    assert_eq!(locate("0::/other\n", mi).v2, None);
    assert_eq!(locate("0::/nsx\n", mi).v2, None);
    assert_eq!(locate("0::/ns\n", mi).v2, Some(PathBuf::from("/sys/fs/cgroup x")));
}

// Real cgroups on this host (v1 here, v2 elsewhere): needs cgroups this
// process may write (root, or a delegated v2 subtree) and fails loudly
// without them.

fn real(tag: &str, limits: &Limits) -> SandboxCgroup {
    let name = format!("cordon-test-{}-{tag}", std::process::id());
    let (cg, layers) = SandboxCgroup::create(&name, limits);
    let cg = cg.unwrap_or_else(|| panic!("no cgroup for the test on this host: {layers:?}"));
    for l in &layers {
        assert!(l.enforced, "this test needs writable cgroups with pids, memory and cpu: {l:?}");
    }
    cg
}

/// Runs `script` in `sh` placed in `cg` before it does anything, and
/// returns its exit status and output.
fn run_in(cg: &SandboxCgroup, script: &str) -> (std::process::ExitStatus, String) {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let mut child = Command::new("/bin/sh")
        .args(["-c", &format!("read _; {script}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning sh");
    cg.add(child.id()).expect("moving sh into the cgroup");
    child.stdin.take().expect("stdin").write_all(b"go\n").expect("starting sh");
    let mut out = String::new();
    // Ends when sh exits or the test kills it (stragglers do not hold it).
    child.stdout.take().expect("stdout").read_to_string(&mut out).expect("reading sh");
    (child.wait().expect("waiting for sh"), out)
}

#[test]
fn test_real_pids_max_is_enforced_then_kill_all_and_drop_clean_up() {
    let forks = "n=0; for i in 1 2 3 4 5 6 7 8 9 10; do sleep 60 >/dev/null & n=$((n+1)); done; echo started $n";
    // Control: room for the shell and its ten children.
    let cg = real("pids-room", &Limits { pids_max: 64, memory_max: 0, cpus: 0 });
    let (status, out) = run_in(&cg, forks);
    assert!(status.success() && out.trim() == "started 10", "{status:?} {out:?}");
    assert_eq!(cg.members().len(), 10, "the sleeps are still in the cgroup");
    let dirs: Vec<PathBuf> = cg.dirs().into_iter().map(Path::to_path_buf).collect();
    cg.kill_all();
    assert!(cg.members().is_empty());
    drop(cg);
    for d in &dirs {
        assert!(!d.exists(), "{} is left behind", d.display());
    }
    // Five tasks at most: the shell cannot fork its sixth.
    let cg = real("pids-five", &Limits { pids_max: 5, memory_max: 0, cpus: 0 });
    let (status, out) = run_in(&cg, forks);
    assert!(!status.success() && out.is_empty(), "{status:?} {out:?}");
    assert!(cg.members().len() <= 5);
    cg.kill_all();
    assert!(cg.members().is_empty());
}

#[test]
fn test_real_memory_max_oom_kills_and_is_counted() {
    let hog = "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived ${#x}";
    // Control: the hog fits.
    let cg = real("mem-room", &Limits { pids_max: 64, memory_max: 1 << 30, cpus: 1 });
    let (status, out) = run_in(&cg, hog);
    assert!(status.success() && out.trim() == "survived 100000000", "{status:?} {out:?}");
    assert_eq!(cg.oom_kills(), 0);
    drop(cg);
    let cg = real("mem-small", &Limits { pids_max: 64, memory_max: 32 << 20, cpus: 1 });
    let (status, out) = run_in(&cg, hog);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?} {out:?}");
    assert!(cg.oom_kills() >= 1);
}

/// The real host with its v2 mount hidden: v1 alone, as on hosts
/// without the unified hierarchy, so kill_all must use the freezer.
struct V1Only;

impl CgroupFs for V1Only {
    fn read(&self, path: &Path) -> io::Result<String> {
        let text = RealFs.read(path)?;
        if path != Path::new("/proc/self/mountinfo") {
            return Ok(text);
        }
        Ok(text.lines().filter(|l| !l.contains(" - cgroup2 ")).map(|l| format!("{l}\n")).collect())
    }
    fn write(&self, path: &Path, data: &str) -> io::Result<()> {
        RealFs.write(path, data)
    }
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        RealFs.mkdir(path)
    }
    fn rmdir(&self, path: &Path) -> io::Result<()> {
        RealFs.rmdir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        RealFs.exists(path)
    }
    fn kill(&self, pid: i32) -> io::Result<()> {
        RealFs.kill(pid)
    }
    fn own_pid(&self) -> u32 {
        RealFs.own_pid()
    }
    fn sleep(&self, d: Duration) {
        RealFs.sleep(d)
    }
}

#[test]
fn test_real_v1_kill_all_freezes_and_kills_every_process() {
    let name = format!("cordon-test-{}-v1kill", std::process::id());
    let (cg, layers) = SandboxCgroup::create_with(V1Only, &name, &Limits { pids_max: 64, memory_max: 0, cpus: 0 });
    let cg = cg.unwrap_or_else(|| panic!("no cgroup for the test on this host: {layers:?}"));
    if !cg.v1.iter().any(|(c, _)| *c == Controller::Freezer) {
        panic!("this test needs a cgroup v1 freezer hierarchy (this development host has one): {:?}", cg.dirs());
    }
    assert!(cg.v2.is_none());
    let cg_real: &SandboxCgroup<V1Only> = &cg;
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let mut child = Command::new("/bin/sh")
        .args(["-c", "read _; for i in 1 2 3 4 5; do sleep 60 >/dev/null & done; echo ready; exec sleep 60 >/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning sh");
    cg_real.add(child.id()).expect("moving sh into the cgroup");
    child.stdin.take().expect("stdin").write_all(b"go\n").expect("starting sh");
    let mut out = String::new();
    child.stdout.take().expect("stdout").read_to_string(&mut out).expect("reading sh");
    assert_eq!(out.trim(), "ready");
    assert_eq!(cg_real.members().len(), 6);
    cg_real.kill_all();
    assert!(cg_real.members().is_empty());
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.wait().expect("waiting for sh").signal(), Some(libc::SIGKILL));
    let state =
        std::fs::read_to_string(cg.v1.iter().find(|(c, _)| *c == Controller::Freezer).unwrap().1.join("freezer.state"));
    assert_eq!(state.expect("freezer.state").trim(), "THAWED");
}

#[test]
fn test_real_cpu_quota_is_written() {
    let cg = real("cpu", &Limits { pids_max: 64, memory_max: 0, cpus: 1 });
    let (dir, v2) = cg.dir_of(Controller::Cpu).expect("cpu placed");
    let got = if v2 {
        std::fs::read_to_string(dir.join("cpu.max")).unwrap()
    } else {
        std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).unwrap()
    };
    assert_eq!(got.trim(), if v2 { "100000 100000" } else { "100000" });
}
