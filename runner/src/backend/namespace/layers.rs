//! The namespace sandbox's isolation layers by name: what `--require` and
//! `--strict` accept, what the run's first line and `cordon doctor` list,
//! and the check that refuses to run when a required layer is not in force.

use super::confine::Layer;

/// Every layer a user may require, in the order they are reported.
pub const NAMES: &[&str] = &[
    "filesystem",
    "pid",
    "network",
    "uid-map",
    "no-new-privs",
    "rlimits",
    "landlock",
    "capabilities",
    "seccomp",
    "cgroup-pids",
    "cgroup-memory",
    "cgroup-cpu",
];

/// The user-facing name of a layer (`cgroup pids` and `no_new_privs` as
/// `cgroup-pids` and `no-new-privs`).
pub fn canonical(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace([' ', '_'], "-")
}

/// Parses `--require a,b,...` (`cgroup` stands for the three cgroup layers,
/// `all` for every layer).
pub fn parse_required(list: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for item in list.iter().flat_map(|s| s.split(',')).map(canonical).filter(|s| !s.is_empty()) {
        let names: Vec<String> = match item.as_str() {
            "all" => NAMES.iter().map(|s| s.to_string()).collect(),
            "cgroup" | "cgroups" => ["cgroup-pids", "cgroup-memory", "cgroup-cpu"].map(String::from).to_vec(),
            n if NAMES.contains(&n) => vec![item.clone()],
            _ => return Err(format!("unknown layer {item:?}; layers: {}, cgroup, all", NAMES.join(", "))),
        };
        for n in names {
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    Ok(out)
}

/// Every required layer is in force, or the first one that is not, with why.
pub fn check(required: &[String], layers: &[Layer]) -> Result<(), String> {
    for r in required {
        match layers.iter().find(|l| canonical(&l.name) == *r) {
            Some(l) if l.enforced => {}
            Some(l) => return Err(format!("layer {r} is required but not enforced here: {}", l.detail)),
            None => return Err(format!("layer {r} is required but this sandbox does not report it")),
        }
    }
    Ok(())
}

/// One line listing every layer as enforced or not.
pub fn summary(layers: &[Layer]) -> String {
    let parts: Vec<String> = layers
        .iter()
        .map(|l| {
            let n = canonical(&l.name);
            if l.enforced {
                format!("{n}: {}", l.detail)
            } else {
                format!("{n}: NOT ENFORCED ({})", l.detail)
            }
        })
        .collect();
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_required_table() {
        assert_eq!(parse_required(&["seccomp,landlock".into()]).unwrap(), ["seccomp", "landlock"]);
        assert_eq!(parse_required(&["cgroup".into(), "cgroup-pids".into()]).unwrap().len(), 3);
        assert_eq!(parse_required(&["all".into()]).unwrap().len(), NAMES.len());
        assert_eq!(parse_required(&["No_New_Privs".into()]).unwrap(), ["no-new-privs"]);
        assert!(parse_required(&["selinux".into()]).is_err());
        assert!(parse_required(&[]).unwrap().is_empty());
    }

    #[test]
    fn test_check_names_the_missing_layer() {
        let layers =
            vec![Layer::new("seccomp", true, "41 calls"), Layer::new("cgroup memory", false, "no memory controller")];
        assert!(check(&["seccomp".into()], &layers).is_ok());
        let e = check(&["seccomp".into(), "cgroup-memory".into()], &layers).unwrap_err();
        assert!(e.contains("cgroup-memory") && e.contains("no memory controller"), "{e}");
        assert!(check(&["landlock".into()], &layers).unwrap_err().contains("does not report"));
    }
}
