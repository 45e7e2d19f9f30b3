//! The sandbox's own cgroup: limits on tasks, memory (without swap) and CPU,
//! a way to kill everything in it, and its OOM kills. Each controller goes
//! where this kernel has it: its cgroup v1 hierarchy (one directory per
//! controller) or the v2 unified hierarchy (a child of this process's own
//! cgroup, which must be delegated to us). Where v2 is mounted the sandbox
//! also gets a v2 directory even without controllers, for `cgroup.kill`.
//! Every directory is a child of this process's cgroup in its hierarchy and
//! is removed on Drop, after killing what is left in it. All file-system
//! access goes through `CgroupFs`, so the v1/v2 decisions are unit-tested
//! with a recording fake.

use super::confine::Layer;
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The sandbox's limits; 0 means no limit for that resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub pids_max: u64,
    /// Bytes, swap included (swap is turned off where the kernel can).
    pub memory_max: u64,
    pub cpus: u32,
}

pub const LAYER_PIDS: &str = "cgroup pids";
pub const LAYER_MEMORY: &str = "cgroup memory";
pub const LAYER_CPU: &str = "cgroup cpu";

/// Where cordon itself moves, on v2, so that its cgroup may hand
/// controllers to the sandbox's ("no internal processes").
pub const RUNNER_LEAF: &str = "cordon-runner";
/// The CFS period used for `cpus`.
const CPU_PERIOD_US: u64 = 100_000;
/// How long kill_all and Drop wait for the cgroup to empty.
const EMPTY_DEADLINE: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(10);
/// The first rounds of a wait sleep this long: a sandbox whose init was
/// just killed is usually gone within a millisecond or two.
const FIRST_POLL: Duration = Duration::from_millis(1);
const FIRST_ROUNDS: u32 = 10;

/// The pause after round `i` of a wait bounded by EMPTY_DEADLINE, and how
/// many rounds fit in it.
fn pause(i: u32) -> Duration {
    if i < FIRST_ROUNDS {
        FIRST_POLL
    } else {
        POLL
    }
}

fn rounds() -> u32 {
    let first = FIRST_POLL * FIRST_ROUNDS;
    FIRST_ROUNDS + ((EMPTY_DEADLINE - first).as_millis() / POLL.as_millis()) as u32
}

/// The calls cgroup management makes (youki's `syscall/` is the model).
pub trait CgroupFs: Send {
    fn read(&self, path: &Path) -> io::Result<String>;
    fn write(&self, path: &Path, data: &str) -> io::Result<()>;
    fn mkdir(&self, path: &Path) -> io::Result<()>;
    fn rmdir(&self, path: &Path) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
    fn kill(&self, pid: i32) -> io::Result<()>;
    fn own_pid(&self) -> u32;
    fn sleep(&self, d: Duration);
}

/// The real file system and kill(2).
pub struct RealFs;

impl CgroupFs for RealFs {
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn write(&self, path: &Path, data: &str) -> io::Result<()> {
        // One write(2) per value: cgroup files take one value per write.
        use std::io::Write;
        std::fs::OpenOptions::new().write(true).open(path)?.write_all(data.as_bytes())
    }
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }
    fn rmdir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn kill(&self, pid: i32) -> io::Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
            .map_err(io::Error::from)
    }
    fn own_pid(&self) -> u32 {
        std::process::id()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Controller {
    Pids,
    Memory,
    Cpu,
    /// v1 only: what kill_all freezes before killing.
    Freezer,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Controller::Pids => "pids",
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Freezer => "freezer",
        }
    }
}

/// One cgroup file system mount, from /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    /// The cgroup mounted there, in its hierarchy.
    root: String,
    point: PathBuf,
    v2: bool,
    /// Super options (the v1 controllers and `name=`).
    options: Vec<String>,
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else { continue };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let v2 = match post[0] {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        out.push(Mount {
            root: unescape(pre[3]),
            point: PathBuf::from(unescape(pre[4])),
            v2,
            options: post[2].split(',').map(str::to_string).collect(),
        });
    }
    out
}

/// This process's cgroup paths: (v2 path, [(v1 controllers, path)]).
fn parse_proc_cgroup(text: &str) -> (Option<String>, Vec<(Vec<String>, String)>) {
    let mut v2 = None;
    let mut v1 = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else { continue };
        if id == "0" && ctrls.is_empty() {
            v2 = Some(path.to_string());
        } else {
            v1.push((ctrls.split(',').map(str::to_string).collect(), path.to_string()));
        }
    }
    (v2, v1)
}

/// `point` + (`path` relative to the mount's `root`), or None when this
/// process's cgroup is not visible through that mount.
fn under(m: &Mount, path: &str) -> Option<PathBuf> {
    let rel = if m.root == "/" { path } else { path.strip_prefix(m.root.as_str())? };
    if !(rel.is_empty() || rel.starts_with('/')) {
        return None;
    }
    let rel = rel.trim_start_matches('/');
    Some(if rel.is_empty() { m.point.clone() } else { m.point.join(rel) })
}

/// This process's own cgroup directory per v1 controller, and in v2.
#[derive(Debug, Default, PartialEq, Eq)]
struct Located {
    v1: Vec<(Controller, PathBuf)>,
    v2: Option<PathBuf>,
}

fn locate(proc_cgroup: &str, mountinfo: &str) -> Located {
    let mounts = parse_mountinfo(mountinfo);
    let (v2_path, v1_paths) = parse_proc_cgroup(proc_cgroup);
    let mut out = Located::default();
    for c in [Controller::Pids, Controller::Memory, Controller::Cpu, Controller::Freezer] {
        let name = c.name();
        let mount = mounts.iter().find(|m| !m.v2 && m.options.iter().any(|o| o == name));
        let path = v1_paths.iter().find(|(cs, _)| cs.iter().any(|x| x == name)).map(|(_, p)| p);
        if let Some(dir) = mount.zip(path).and_then(|(m, p)| under(m, p)) {
            out.v1.push((c, dir));
        }
    }
    if let (Some(m), Some(p)) = (mounts.iter().find(|m| m.v2), v2_path) {
        out.v2 = under(m, &p);
    }
    out
}

/// A hint for a v2 directory this user may not write.
fn not_delegated(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::PermissionDenied {
        " (not delegated to this user: run cordon under systemd-run --user --scope -p Delegate=yes)"
    } else {
        ""
    }
}

/// The pids listed in a `cgroup.procs` text.
fn pids_in(text: &str) -> Vec<i32> {
    text.split_whitespace().filter_map(|s| s.parse().ok()).collect()
}

/// The value of `key` in a flat keyed file (`memory.events`, `memory.oom_control`).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// One layer per limited controller, filled in as `create` goes.
struct Report {
    pids: Result<String, String>,
    memory: Result<String, String>,
    cpu: Result<String, String>,
}

impl Report {
    fn all(why: &str) -> Report {
        Report { pids: Err(why.to_string()), memory: Err(why.to_string()), cpu: Err(why.to_string()) }
    }
    fn slot(&mut self, c: Controller) -> Option<&mut Result<String, String>> {
        match c {
            Controller::Pids => Some(&mut self.pids),
            Controller::Memory => Some(&mut self.memory),
            Controller::Cpu => Some(&mut self.cpu),
            Controller::Freezer => None,
        }
    }
    fn layers(self) -> Vec<Layer> {
        let l = |name, r: Result<String, String>| match r {
            Ok(d) => Layer::new(name, true, d),
            Err(d) => Layer::new(name, false, d),
        };
        vec![l(LAYER_PIDS, self.pids), l(LAYER_MEMORY, self.memory), l(LAYER_CPU, self.cpu)]
    }
}

/// The sandbox's cgroup directories; removed on Drop, after kill_all.
pub struct SandboxCgroup<F: CgroupFs = RealFs> {
    fs: F,
    /// The sandbox's directory in each v1 hierarchy it uses.
    v1: Vec<(Controller, PathBuf)>,
    /// Its directory in the v2 hierarchy, when there is one.
    v2: Option<PathBuf>,
    /// Controllers whose files are in the v2 directory.
    on_v2: BTreeSet<Controller>,
}

impl SandboxCgroup<RealFs> {
    /// Creates the sandbox's cgroup `name` (one path component) beside this
    /// process's own, with `limits`. The layers say, per controller, what
    /// holds and why not; `None` when no directory could be made at all.
    /// On v2 this may move cordon itself (the whole process) into
    /// `<its cgroup>/cordon-runner`, where it then stays: the v2 rule that a
    /// cgroup handing controllers to children holds no processes itself.
    pub fn create(name: &str, limits: &Limits) -> (Option<SandboxCgroup>, Vec<Layer>) {
        SandboxCgroup::create_with(RealFs, name, limits)
    }
}

impl<F: CgroupFs> SandboxCgroup<F> {
    pub fn create_with(fs: F, name: &str, limits: &Limits) -> (Option<SandboxCgroup<F>>, Vec<Layer>) {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') || name == RUNNER_LEAF {
            return (None, Report::all(&format!("invalid cgroup name {name:?}")).layers());
        }
        let texts =
            fs.read(Path::new("/proc/self/cgroup")).and_then(|c| Ok((c, fs.read(Path::new("/proc/self/mountinfo"))?)));
        let (proc_cgroup, mountinfo) = match texts {
            Ok(t) => t,
            Err(e) => return (None, Report::all(&format!("reading this process's cgroups: {e}")).layers()),
        };
        let located = locate(&proc_cgroup, &mountinfo);
        let mut report = Report::all("the kernel has no such cgroup controller mounted, v1 or v2");
        let mut cg = SandboxCgroup { fs, v1: Vec::new(), v2: None, on_v2: BTreeSet::new() };

        // v1: a directory per hierarchy (controllers mounted together share one).
        for (c, parent) in &located.v1 {
            let dir = parent.join(name);
            if !cg.v1.iter().any(|(_, d)| d == &dir) {
                if let Err(e) = cg.fs.mkdir(&dir) {
                    if let Some(slot) = report.slot(*c) {
                        *slot = Err(format!("v1: creating {}: {e}", dir.display()));
                    }
                    continue;
                }
            }
            cg.v1.push((*c, dir));
        }
        // v2: the controllers v1 does not have, and a directory for cgroup.kill.
        if let Some(own) = &located.v2 {
            let want: Vec<Controller> = [Controller::Pids, Controller::Memory, Controller::Cpu]
                .into_iter()
                .filter(|c| !located.v1.iter().any(|(x, _)| x == c))
                .collect();
            let base = if own.file_name().is_some_and(|n| n == RUNNER_LEAF) {
                own.parent().map(Path::to_path_buf).unwrap_or_else(|| own.clone())
            } else {
                own.clone()
            };
            let enabled = cg.delegate(&base, &want, &mut report);
            let dir = base.join(name);
            match cg.fs.mkdir(&dir) {
                Ok(()) => {
                    cg.v2 = Some(dir);
                    cg.on_v2 = enabled;
                }
                Err(e) => {
                    for c in &enabled {
                        if let Some(slot) = report.slot(*c) {
                            *slot = Err(format!("v2: creating {}: {e}{}", dir.display(), not_delegated(&e)));
                        }
                    }
                }
            }
        }
        cg.write_limits(limits, &mut report);
        let layers = report.layers();
        if cg.v1.is_empty() && cg.v2.is_none() {
            return (None, layers);
        }
        (Some(cg), layers)
    }

    /// Makes `want` available to children of `base` (v2): moves this process
    /// into a leaf of `base` when it sits in `base` alone, then enables the
    /// controllers in `base`'s subtree_control. Returns those enabled.
    fn delegate(&self, base: &Path, want: &[Controller], report: &mut Report) -> BTreeSet<Controller> {
        let mut enabled = BTreeSet::new();
        if want.is_empty() {
            return enabled;
        }
        let read_set = |f: &str| -> BTreeSet<String> {
            self.fs.read(&base.join(f)).unwrap_or_default().split_whitespace().map(str::to_string).collect()
        };
        let available = read_set("cgroup.controllers");
        let on = read_set("cgroup.subtree_control");
        let mut need = Vec::new();
        for c in want {
            if on.contains(c.name()) {
                enabled.insert(*c);
            } else if !available.contains(c.name()) {
                if let Some(slot) = report.slot(*c) {
                    *slot = Err(format!(
                        "v2: not delegated here ({} lists no {})",
                        base.join("cgroup.controllers").display(),
                        c.name()
                    ));
                }
            } else {
                need.push(*c);
            }
        }
        if need.is_empty() {
            return enabled;
        }
        if let Err(why) = self.vacate(base) {
            for c in &need {
                if let Some(slot) = report.slot(*c) {
                    *slot = Err(why.clone());
                }
            }
            return enabled;
        }
        for c in need {
            match self.fs.write(&base.join("cgroup.subtree_control"), &format!("+{}", c.name())) {
                Ok(()) => {
                    enabled.insert(c);
                }
                Err(e) => {
                    if let Some(slot) = report.slot(c) {
                        *slot = Err(format!("v2: enabling {} in {}: {e}", c.name(), base.display()));
                    }
                }
            }
        }
        enabled
    }

    /// Leaves `base` without processes of its own (v2's rule for handing
    /// out controllers): moves this process into `base/cordon-runner`, or
    /// says why it cannot.
    fn vacate(&self, base: &Path) -> Result<(), String> {
        let procs =
            self.fs.read(&base.join("cgroup.procs")).map_err(|e| format!("v2: reading {}: {e}", base.display()))?;
        let own = self.fs.own_pid() as i32;
        let pids = pids_in(&procs);
        let others: Vec<String> = pids.iter().filter(|p| **p != own).map(|p| p.to_string()).collect();
        if !others.is_empty() {
            return Err(format!(
                "v2: cordon's cgroup {} also holds other processes ({}); run cordon in a cgroup of its own \
                 (systemd-run --user --scope -p Delegate=yes cordon ...)",
                base.display(),
                others.join(", ")
            ));
        }
        if pids.contains(&own) {
            let leaf = base.join(RUNNER_LEAF);
            match self.fs.mkdir(&leaf) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("v2: creating {}: {e}{}", leaf.display(), not_delegated(&e))),
            }
            self.fs
                .write(&leaf.join("cgroup.procs"), &own.to_string())
                .map_err(|e| format!("v2: moving cordon into {}: {e}", leaf.display()))?;
        }
        Ok(())
    }

    /// The directory holding `c`'s files, and whether it is v2.
    fn dir_of(&self, c: Controller) -> Option<(&Path, bool)> {
        if let Some((_, d)) = self.v1.iter().find(|(x, _)| *x == c) {
            return Some((d, false));
        }
        if self.on_v2.contains(&c) {
            return self.v2.as_deref().map(|d| (d, true));
        }
        None
    }

    fn write_limits(&self, limits: &Limits, report: &mut Report) {
        let w = |dir: &Path, file: &str, value: String| -> Result<(), String> {
            self.fs
                .write(&dir.join(file), &value)
                .map_err(|e| format!("writing {} to {}: {e}", value, dir.join(file).display()))
        };
        let v = |v2: bool| if v2 { "v2" } else { "v1" };
        if let Some((dir, v2)) = self.dir_of(Controller::Pids) {
            let value = if limits.pids_max == 0 { "max".to_string() } else { limits.pids_max.to_string() };
            report.pids =
                w(dir, "pids.max", value.clone()).map(|()| format!("{}: pids.max {value} in {}", v(v2), dir.display()));
        }
        if let Some((dir, v2)) = self.dir_of(Controller::Memory) {
            report.memory = self.write_memory(dir, v2, limits.memory_max, &w);
        }
        if let Some((dir, v2)) = self.dir_of(Controller::Cpu) {
            let quota = u64::from(limits.cpus) * CPU_PERIOD_US;
            let r = if v2 {
                let q = if quota == 0 { "max".to_string() } else { quota.to_string() };
                w(dir, "cpu.max", format!("{q} {CPU_PERIOD_US}"))
            } else {
                let q = if quota == 0 { "-1".to_string() } else { quota.to_string() };
                w(dir, "cpu.cfs_period_us", CPU_PERIOD_US.to_string()).and_then(|()| w(dir, "cpu.cfs_quota_us", q))
            };
            let what = if quota == 0 { "no limit".to_string() } else { format!("{} cpus", limits.cpus) };
            report.cpu = r.map(|()| format!("{}: {what} in {}", v(v2), dir.display()));
        }
    }

    fn write_memory(
        &self,
        dir: &Path,
        v2: bool,
        max: u64,
        w: &dyn Fn(&Path, &str, String) -> Result<(), String>,
    ) -> Result<String, String> {
        let swap_exists = self.fs.read(Path::new("/proc/swaps")).map(|s| s.lines().count() > 1).unwrap_or(true);
        let what = if max == 0 { "no limit".to_string() } else { format!("{} MiB", max >> 20) };
        let swap = if v2 {
            w(dir, "memory.max", if max == 0 { "max".to_string() } else { max.to_string() })?;
            if self.fs.exists(&dir.join("memory.swap.max")) {
                w(dir, "memory.swap.max", "0".to_string())?;
                "no swap".to_string()
            } else if swap_exists {
                "swap NOT limited (no memory.swap.max: swap accounting is off)".to_string()
            } else {
                "no swap on this host".to_string()
            }
        } else {
            let value = if max == 0 { "-1".to_string() } else { max.to_string() };
            // The memory limit first: memsw must never be below it.
            w(dir, "memory.limit_in_bytes", value.clone())?;
            if self.fs.exists(&dir.join("memory.memsw.limit_in_bytes")) {
                w(dir, "memory.memsw.limit_in_bytes", value)?;
                "no swap beyond it (memsw)".to_string()
            } else if swap_exists {
                // Best effort: the kernel then swaps this cgroup only in extremis.
                let _ = w(dir, "memory.swappiness", "0".to_string());
                "swap NOT limited (no memory.memsw.*: boot with swapaccount=1)".to_string()
            } else {
                "no swap on this host".to_string()
            }
        };
        Ok(format!("{}: {what}, {swap}, in {}", if v2 { "v2" } else { "v1" }, dir.display()))
    }

    /// Every directory of the sandbox's cgroup, v2 first.
    pub fn dirs(&self) -> Vec<&Path> {
        let mut out: Vec<&Path> = self.v2.as_deref().into_iter().collect();
        for (_, d) in &self.v1 {
            if !out.contains(&d.as_path()) {
                out.push(d);
            }
        }
        out
    }

    /// The sandbox's directory in each v1 hierarchy, for ns-init to join
    /// (`cgjoin::join_v1`).
    pub fn v1_dirs(&self) -> Vec<PathBuf> {
        self.dirs().into_iter().filter(|d| Some(*d) != self.v2.as_deref()).map(Path::to_path_buf).collect()
    }

    /// Its v2 directory, where ns-init creates PID 1 (`cgjoin::clone_into`).
    pub fn v2_dir(&self) -> Option<&Path> {
        self.v2.as_deref()
    }

    /// Moves process `pid` into every directory by `cgroup.procs` (which
    /// costs an RCU grace period: the sandbox joins by `cgjoin` instead).
    pub fn add(&self, pid: u32) -> io::Result<()> {
        for d in self.dirs() {
            let f = d.join("cgroup.procs");
            self.fs
                .write(&f, &pid.to_string())
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", f.display())))?;
        }
        Ok(())
    }

    /// The processes in the cgroup, over every directory.
    fn members(&self) -> BTreeSet<i32> {
        self.dirs().iter().flat_map(|d| pids_in(&self.fs.read(&d.join("cgroup.procs")).unwrap_or_default())).collect()
    }

    /// Kills everything in the cgroup and waits (bounded) for it to empty:
    /// `cgroup.kill` on v2 (5.14+), else frozen (v2 `cgroup.freeze` or the v1
    /// freezer, so nothing forks in between), SIGKILL to every pid listed,
    /// thawed.
    pub fn kill_all(&self) {
        let v2_kill = self.v2.as_ref().map(|d| d.join("cgroup.kill")).filter(|f| self.fs.exists(f));
        if let Some(f) = v2_kill {
            if self.fs.write(&f, "1").is_ok() {
                self.wait_empty();
                return;
            }
        }
        let freeze: Option<(PathBuf, &str, &str)> =
            match (&self.v2, self.v1.iter().find(|(c, _)| *c == Controller::Freezer)) {
                (_, Some((_, d))) => Some((d.join("freezer.state"), "FROZEN", "THAWED")),
                (Some(d), None) if self.fs.exists(&d.join("cgroup.freeze")) => {
                    Some((d.join("cgroup.freeze"), "1", "0"))
                }
                _ => None,
            };
        let frozen = freeze.as_ref().is_some_and(|(f, on, _)| self.fs.write(f, on).is_ok());
        for pid in self.members() {
            let _ = self.fs.kill(pid);
        }
        if let (true, Some((f, _, off))) = (frozen, &freeze) {
            let _ = self.fs.write(f, off);
        }
        self.wait_empty();
    }

    /// Waits until no process is left, killing stragglers, up to EMPTY_DEADLINE.
    fn wait_empty(&self) {
        for i in 0..rounds() {
            let left = self.members();
            if left.is_empty() {
                return;
            }
            for pid in left {
                let _ = self.fs.kill(pid);
            }
            self.fs.sleep(pause(i));
        }
        tracing::warn!(dirs = ?self.dirs(), "the sandbox's cgroup did not empty");
    }

    /// How many times the kernel's OOM killer acted in the cgroup.
    pub fn oom_kills(&self) -> u64 {
        match self.dir_of(Controller::Memory) {
            Some((d, true)) => keyed(&self.fs.read(&d.join("memory.events")).unwrap_or_default(), "oom_kill"),
            Some((d, false)) => keyed(&self.fs.read(&d.join("memory.oom_control")).unwrap_or_default(), "oom_kill"),
            None => None,
        }
        .unwrap_or(0)
    }
}

impl<F: CgroupFs> Drop for SandboxCgroup<F> {
    fn drop(&mut self) {
        // Usually empty already (ns-init exited, after the kernel reaped the
        // whole PID namespace): then removing it is all, with no kill and no
        // polling. rmdir refuses a cgroup with a process in it (EBUSY), so
        // trying it first removes nothing that is in use.
        let dirs: Vec<PathBuf> = self
            .dirs()
            .into_iter()
            .filter(|d| match self.fs.rmdir(d) {
                Ok(()) => false,
                Err(e) => e.kind() != io::ErrorKind::NotFound,
            })
            .map(Path::to_path_buf)
            .collect();
        if dirs.is_empty() {
            return;
        }
        self.kill_all();
        for d in dirs {
            // An exiting task can hold the directory a moment longer.
            let mut last = None;
            for i in 0..rounds() {
                match self.fs.rmdir(&d) {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
                self.fs.sleep(pause(i));
            }
            if let Some(e) = last {
                tracing::warn!(dir = %d.display(), error = %e, "removing the sandbox's cgroup failed");
            }
        }
    }
}

#[cfg(test)]
mod tests;
