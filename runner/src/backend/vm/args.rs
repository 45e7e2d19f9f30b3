//! The QEMU command line, built in one place from a VmConfig by pure
//! functions, each testable argument by argument without QEMU. No secret
//! goes into it (argv is visible to every local user through ps): the
//! agent's token travels as a fw_cfg file.

use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Hvf,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Hvf => "hvf",
            Accel::Tcg => "tcg",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// x86_64 microvm: virtio-mmio devices described by ACPI.
    Microvm,
    /// x86_64 q35, when this QEMU lacks microvm: virtio-pci devices.
    Q35,
    /// aarch64 virt.
    Virt,
}

impl Machine {
    fn mmio(self) -> bool {
        matches!(self, Machine::Microvm)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Kernel vhost-vsock with this guest CID.
    KernelVsock { cid: u32 },
    /// vhost-user vsock: QEMU connects to vhost-device-vsock's socket.
    VhostUserVsock { socket: PathBuf },
    /// A virtio-serial port named `name`; QEMU listens on `socket`.
    Serial { socket: PathBuf, name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    /// No NIC at all.
    Off,
    /// A NIC on QEMU's user network with restrict=on: no egress.
    UserRestricted,
    /// A NIC whose frames go to cordon's egress gate over the inherited
    /// stream socket `fd` (never vhost-user networking: it would bypass the gate).
    Gated { fd: i32 },
}

/// A virtio-blk disk, found in the guest by its serial (never probe order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub serial: String,
    pub read_only: bool,
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub machine: Machine,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    /// The inherited fd of a connected stream socket that QEMU writes the
    /// serial console to (cordon keeps a bounded tail of it).
    pub console_fd: i32,
    pub qmp_socket: PathBuf,
    /// A 0600 file in the 0700 temp dir holding the agent's token, handed
    /// to the guest as the fw_cfg item [`TOKEN_FW_CFG`].
    pub token_file: PathBuf,
    pub control: Control,
    pub net: Net,
    /// Use QEMU's seccomp sandbox.
    pub sandbox: bool,
    /// The userland disk and its scratch disk, if the run has an image.
    pub disks: Vec<Disk>,
}

/// The fw_cfg item name the agent reads its token from (its token.rs).
pub use cordon_protocol::boot::TOKEN_FW_CFG;

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

fn path_arg(prefix: &str, p: &std::path::Path, suffix: &str) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(p.as_os_str());
    s.push(suffix);
    s
}

pub fn machine_args(c: &VmConfig) -> Vec<OsString> {
    // Shared guest memory is needed whenever a vhost-user backend maps it.
    let shared = matches!(c.control, Control::VhostUserVsock { .. });
    let backend = if shared { ",memory-backend=mem" } else { "" };
    let m = match c.machine {
        Machine::Microvm => format!("microvm,rtc=on,acpi=on{backend}"),
        Machine::Q35 => format!("q35{backend}"),
        Machine::Virt => format!("virt,gic-version=max{backend}"),
    };
    let cpu = match (c.accel, c.machine) {
        (Accel::Kvm | Accel::Hvf, _) => "host",
        (Accel::Tcg, _) => "max",
    };
    let mut v = os(&["-M", &m, "-accel", c.accel.as_str(), "-cpu", cpu]);
    v.extend(os(&["-smp", &c.cpus.to_string(), "-m", &format!("{}M", c.memory_mib)]));
    if shared {
        v.extend(os(&["-object", &format!("memory-backend-memfd,id=mem,size={}M,share=on", c.memory_mib)]));
    }
    v
}

pub fn base_args() -> Vec<OsString> {
    os(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
}

pub fn sandbox_args(c: &VmConfig) -> Vec<OsString> {
    if c.sandbox {
        os(&["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"])
    } else {
        vec![]
    }
}

pub fn boot_args(c: &VmConfig) -> Vec<OsString> {
    vec![
        "-kernel".into(),
        c.kernel.clone().into(),
        "-initrd".into(),
        c.initrd.clone().into(),
        "-append".into(),
        c.cmdline.clone().into(),
    ]
}

/// The token as a fw_cfg file QEMU reads at startup: only its path is in argv.
pub fn secret_args(c: &VmConfig) -> Vec<OsString> {
    // QemuOpts values escape a comma by doubling it.
    let path = c.token_file.as_os_str().to_string_lossy().replace(',', ",,");
    vec!["-fw_cfg".into(), format!("name={TOKEN_FW_CFG},file={path}").into()]
}

pub fn console_args(c: &VmConfig) -> Vec<OsString> {
    vec![
        "-chardev".into(),
        format!("socket,id=console,fd={}", c.console_fd).into(),
        "-serial".into(),
        "chardev:console".into(),
        "-qmp".into(),
        path_arg("unix:", &c.qmp_socket, ",server=on,wait=off"),
    ]
}

fn dev(c: &VmConfig, mmio: &str, pci: &str) -> String {
    if c.machine.mmio() {
        mmio.to_string()
    } else {
        pci.to_string()
    }
}

pub fn device_args(c: &VmConfig) -> Vec<OsString> {
    let mut v = os(&["-device", &dev(c, "virtio-rng-device", "virtio-rng-pci")]);
    match &c.control {
        Control::KernelVsock { cid } => {
            let d = dev(c, "vhost-vsock-device", "vhost-vsock-pci");
            v.extend(os(&["-device", &format!("{d},guest-cid={cid}")]));
        }
        Control::VhostUserVsock { socket } => {
            v.push("-chardev".into());
            v.push(path_arg("socket,id=vsock,path=", socket, ""));
            v.extend(os(&[
                "-device",
                &format!("{},chardev=vsock", dev(c, "vhost-user-vsock-device", "vhost-user-vsock-pci")),
            ]));
        }
        Control::Serial { socket, name } => {
            v.extend(os(&["-device", &dev(c, "virtio-serial-device", "virtio-serial-pci")]));
            v.push("-chardev".into());
            v.push(path_arg("socket,id=agent,server=on,wait=off,path=", socket, ""));
            v.extend(os(&["-device", &format!("virtserialport,chardev=agent,name={name}")]));
        }
    }
    match c.net {
        Net::Off => {}
        Net::UserRestricted => {
            v.extend(os(&["-netdev", "user,id=n0,restrict=on,ipv6=off"]));
            v.extend(os(&["-device", &format!("{},netdev=n0", dev(c, "virtio-net-device", "virtio-net-pci"))]));
        }
        Net::Gated { fd } => {
            v.extend(os(&["-netdev", &format!("stream,id=n0,addr.type=fd,addr.str={fd}")]));
            v.extend(os(&["-device", &format!("{},netdev=n0", dev(c, "virtio-net-device", "virtio-net-pci"))]));
        }
    }
    v
}

/// Raw virtio-blk disks: the format is fixed (QEMU never probes a file the
/// guest wrote), and a read-only one is read-only to QEMU itself.
pub fn disk_args(c: &VmConfig) -> Vec<OsString> {
    let mut v = vec![];
    for (i, d) in c.disks.iter().enumerate() {
        let path = d.path.as_os_str().to_string_lossy().replace(',', ",,");
        let ro = if d.read_only { ",read-only=on" } else { "" };
        v.push("-blockdev".into());
        v.push(format!("driver=file,node-name=f{i},filename={path}{ro}").into());
        v.push("-blockdev".into());
        v.push(format!("driver=raw,node-name=d{i},file=f{i}{ro}").into());
        v.push("-device".into());
        v.push(format!("{},drive=d{i},serial={}", dev(c, "virtio-blk-device", "virtio-blk-pci"), d.serial).into());
    }
    v
}

/// The whole argument vector (without the program name).
pub fn qemu_args(c: &VmConfig) -> Vec<OsString> {
    let mut v = base_args();
    v.extend(machine_args(c));
    v.extend(sandbox_args(c));
    v.extend(boot_args(c));
    v.extend(secret_args(c));
    v.extend(console_args(c));
    v.extend(device_args(c));
    v.extend(disk_args(c));
    v
}

/// What the guest kernel cannot measure well under TCG, told instead: the
/// TSC's frequency (without it calibration against the PIT fails and the
/// TSC is marked unstable) and loops per jiffy (each vCPU would otherwise
/// calibrate its delay loop for 0.15-0.3 s, and wrongly).
pub fn tcg_timing(tsc_khz: u64, kernel_hz: Option<u64>) -> String {
    let mut s = format!("tsc_early_khz={tsc_khz} tsc=reliable");
    if let Some(hz) = kernel_hz.filter(|h| *h > 0) {
        s.push_str(&format!(" lpj={}", tsc_khz * 1000 / hz));
    }
    s
}

/// The guest kernel command line. No secrets: it is in QEMU's argv and in
/// the guest's /proc/cmdline.
///
/// Beside the console and the agent's parameters it only skips boot work a
/// VM does not need (measured under TCG with bench-boot; a kernel ignores
/// what it lacks): `8250.nr_uarts=1` (only the console's UART),
/// `no_timer_check` (no busy-wait checking that the IO-APIC timer ticks),
/// `cryptomgr.notests` and `initcall_blacklist=crypto_kdf108_init` (no
/// crypto self-tests: about 0.3-0.9 s of Debian's kernel under TCG; cordon's
/// kernel has neither), and `rcupdate.rcu_expedited=1`: RCU grace periods
/// stay expedited after boot as during it, because the agent waits out
/// several (mounting, enabling cgroup controllers, each exec's move into its
/// cgroup: about 40 ms of an `echo` step's spawn under TCG at HZ=100).
pub fn kernel_cmdline(machine: Machine, listen: &str) -> String {
    let console = if machine == Machine::Virt { "ttyAMA0" } else { "ttyS0" };
    format!(
        "console={console} panic=-1 reboot=t quiet loglevel=4 8250.nr_uarts=1 \
         random.trust_cpu=on no_timer_check cryptomgr.notests initcall_blacklist=crypto_kdf108_init \
         rcupdate.rcu_expedited=1 {}",
        cordon_protocol::boot::BootParams { listen: Some(listen.to_string()), ..Default::default() }.render()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VmConfig {
        VmConfig {
            machine: Machine::Microvm,
            accel: Accel::Tcg,
            cpus: 2,
            memory_mib: 512,
            kernel: "/img/vmlinuz".into(),
            initrd: "/img/initramfs.cpio".into(),
            cmdline: "console=ttyS0".into(),
            console_fd: 4,
            qmp_socket: "/run/c/qmp.sock".into(),
            token_file: "/run/c/token".into(),
            control: Control::VhostUserVsock { socket: "/run/c/vu.sock".into() },
            net: Net::Off,
            sandbox: true,
            disks: vec![],
        }
    }

    #[test]
    fn test_disk_args_raw_serial_read_only() {
        let mut c = cfg();
        c.disks = vec![
            Disk { path: "/cache/a,b/rootfs.erofs".into(), serial: "cordon-root".into(), read_only: true },
            Disk { path: "/run/c/scratch.img".into(), serial: "cordon-scratch".into(), read_only: false },
        ];
        let v = s(disk_args(&c));
        assert!(has_pair(&v, "-blockdev", "driver=file,node-name=f0,filename=/cache/a,,b/rootfs.erofs,read-only=on"));
        assert!(has_pair(&v, "-blockdev", "driver=raw,node-name=d0,file=f0,read-only=on"));
        assert!(has_pair(&v, "-device", "virtio-blk-device,drive=d0,serial=cordon-root"));
        assert!(has_pair(&v, "-blockdev", "driver=raw,node-name=d1,file=f1"));
        assert!(has_pair(&v, "-device", "virtio-blk-device,drive=d1,serial=cordon-scratch"));
        c.machine = Machine::Q35;
        assert!(s(disk_args(&c)).iter().any(|a| a.starts_with("virtio-blk-pci,")));
        assert!(s(qemu_args(&c)).iter().any(|a| a.contains("serial=cordon-scratch")));
    }

    fn s(v: Vec<OsString>) -> Vec<String> {
        v.into_iter().map(|o| o.into_string().unwrap()).collect()
    }

    fn has_pair(v: &[String], a: &str, b: &str) -> bool {
        v.windows(2).any(|w| w[0] == a && w[1] == b)
    }

    #[test]
    fn test_machine_args_microvm_tcg_shared_memory() {
        let v = s(machine_args(&cfg()));
        assert!(has_pair(&v, "-M", "microvm,rtc=on,acpi=on,memory-backend=mem"), "{v:?}");
        assert!(has_pair(&v, "-accel", "tcg"));
        assert!(has_pair(&v, "-cpu", "max"));
        assert!(has_pair(&v, "-smp", "2"));
        assert!(has_pair(&v, "-m", "512M"));
        assert!(has_pair(&v, "-object", "memory-backend-memfd,id=mem,size=512M,share=on"));
    }

    #[test]
    fn test_machine_args_kvm_serial_no_shared_memory() {
        let mut c = cfg();
        c.accel = Accel::Kvm;
        c.control = Control::Serial { socket: "/s".into(), name: "org.cordon.agent".into() };
        let v = s(machine_args(&c));
        assert!(has_pair(&v, "-M", "microvm,rtc=on,acpi=on"));
        assert!(has_pair(&v, "-cpu", "host"));
        assert!(!v.iter().any(|a| a.starts_with("memory-backend-memfd")));
    }

    #[test]
    fn test_base_and_sandbox_args() {
        assert_eq!(s(base_args()), ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
        let v = s(sandbox_args(&cfg()));
        assert_eq!(v[0], "-sandbox");
        assert!(v[1].starts_with("on,"));
        let mut c = cfg();
        c.sandbox = false;
        assert!(sandbox_args(&c).is_empty());
    }

    #[test]
    fn test_boot_and_console_args() {
        let v = s(boot_args(&cfg()));
        assert_eq!(v, ["-kernel", "/img/vmlinuz", "-initrd", "/img/initramfs.cpio", "-append", "console=ttyS0"]);
        let v = s(console_args(&cfg()));
        assert!(has_pair(&v, "-chardev", "socket,id=console,fd=4"), "never a file a guest could grow: {v:?}");
        assert!(has_pair(&v, "-serial", "chardev:console"));
        assert!(has_pair(&v, "-qmp", "unix:/run/c/qmp.sock,server=on,wait=off"));
    }

    #[test]
    fn test_device_args_per_control_and_machine() {
        let v = s(device_args(&cfg()));
        assert!(has_pair(&v, "-device", "virtio-rng-device"));
        assert!(has_pair(&v, "-chardev", "socket,id=vsock,path=/run/c/vu.sock"));
        assert!(has_pair(&v, "-device", "vhost-user-vsock-device,chardev=vsock"));
        assert!(!v.iter().any(|a| a.contains("netdev")), "net off means no NIC: {v:?}");

        let mut c = cfg();
        c.machine = Machine::Q35;
        c.control = Control::KernelVsock { cid: 7 };
        c.net = Net::UserRestricted;
        let v = s(device_args(&c));
        assert!(has_pair(&v, "-device", "vhost-vsock-pci,guest-cid=7"));
        assert!(has_pair(&v, "-netdev", "user,id=n0,restrict=on,ipv6=off"));
        assert!(has_pair(&v, "-device", "virtio-net-pci,netdev=n0"));

        let mut c = cfg();
        c.net = Net::Gated { fd: 3 };
        let v = s(device_args(&c));
        assert!(has_pair(&v, "-netdev", "stream,id=n0,addr.type=fd,addr.str=3"));
        assert!(has_pair(&v, "-device", "virtio-net-device,netdev=n0"));
        assert!(!v.iter().any(|a| a.contains("vhost-user-net")), "the gate must see every frame");

        let mut c = cfg();
        c.control = Control::Serial { socket: "/run/c/agent.sock".into(), name: "org.cordon.agent".into() };
        let v = s(device_args(&c));
        assert!(has_pair(&v, "-device", "virtio-serial-device"));
        assert!(has_pair(&v, "-chardev", "socket,id=agent,server=on,wait=off,path=/run/c/agent.sock"));
        assert!(has_pair(&v, "-device", "virtserialport,chardev=agent,name=org.cordon.agent"));
    }

    #[test]
    fn test_kernel_cmdline() {
        let c = kernel_cmdline(Machine::Microvm, "vsock:1024");
        assert!(c.starts_with("console=ttyS0 "));
        assert!(c.contains(" panic=-1 ") && c.ends_with(" cordon.listen=vsock:1024"));
        assert!(kernel_cmdline(Machine::Virt, "serial:x").starts_with("console=ttyAMA0"));
        for skip in
            ["no_timer_check", "cryptomgr.notests", "initcall_blacklist=crypto_kdf108_init", "rcupdate.rcu_expedited=1"]
        {
            assert!(c.split(' ').any(|w| w == skip), "{skip}: {c}");
        }
    }

    #[test]
    fn test_secret_args_token_by_file() {
        let v = s(secret_args(&cfg()));
        assert_eq!(v, ["-fw_cfg", "name=opt/cordon/token,file=/run/c/token"]);
        let mut c = cfg();
        c.token_file = "/tmp/a,b/token".into();
        assert_eq!(s(secret_args(&c))[1], "name=opt/cordon/token,file=/tmp/a,,b/token");
    }

    #[test]
    fn test_qemu_args_never_carry_the_token() {
        // Every transport, machine and network, with the command line built
        // the way vm::start builds it: the token is only ever a file's content.
        let token = crate::backend::new_token();
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, &token).unwrap();
        let controls = [
            Control::VhostUserVsock { socket: "/run/c/vu.sock".into() },
            Control::KernelVsock { cid: 7 },
            Control::Serial { socket: "/run/c/agent.sock".into(), name: "org.cordon.agent".into() },
        ];
        for machine in [Machine::Microvm, Machine::Q35, Machine::Virt] {
            for control in &controls {
                for net in [Net::Off, Net::UserRestricted, Net::Gated { fd: 3 }] {
                    let mut c = cfg();
                    c.machine = machine;
                    c.control = control.clone();
                    c.net = net;
                    c.cmdline = kernel_cmdline(machine, "vsock:1024");
                    c.token_file = token_file.clone();
                    let v = s(qemu_args(&c));
                    assert!(!v.iter().any(|a| a.contains(&token) || a.contains("token=")), "{v:?}");
                    assert!(has_pair(&v, "-fw_cfg", &format!("name=opt/cordon/token,file={}", token_file.display())));
                }
            }
        }
    }
}
