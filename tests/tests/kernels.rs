//! Both guest kernels boot both kinds of image: Debian's cloud kernel
//! (modules from the initramfs) and cordon's own (everything built in).
//! scripts/test.sh builds cordon's kernel; without it this test says so.

mod backends;
mod common;

use backends::{cordon, text};

fn run(kernel: &str, image: Option<&str>) -> (i32, String, String) {
    let mut c = cordon();
    c.args(["run", "--isolation", "vm", "--accel", "tcg", "--kernel", kernel]);
    if let Some(i) = image {
        c.args(["--image", i, "--no-build"]);
    }
    c.args(["--", "sh", "-c", "uname -r; if test -e /etc/os-release; then head -1 /etc/os-release; fi"]);
    text(&c.output().unwrap())
}

#[test]
fn test_each_kernel_boots_the_default_and_the_debian_image() {
    for (kernel, release) in [("cordon", "-cordon"), ("debian", "-cloud-")] {
        for image in [None, Some("debian")] {
            let (code, stdout, stderr) = run(kernel, image);
            assert_eq!(code, 0, "--kernel {kernel} --image {image:?}: {stdout}\n{stderr}");
            let first = stdout.lines().next().unwrap_or_default();
            assert!(first.contains(release), "--kernel {kernel} booted {first:?}");
            if image.is_some() {
                assert!(stdout.contains("Debian GNU/Linux 12"), "{stdout}");
            }
        }
    }
}

#[test]
fn test_kernel_choice_is_checked() {
    let (code, _, stderr) = text(&cordon().args(["run", "--kernel", "linux", "--", "true"]).output().unwrap());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cordon") && stderr.contains("debian"), "{stderr}");
}
