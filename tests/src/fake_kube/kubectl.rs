//! The real `kubectl` as a test runs it against a fake API server: the
//! cluster's kubeconfig, and the test's directory as HOME (kubectl's
//! discovery cache) and for the manifests it writes.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// What a test holding a kubeconfig and a directory asks of kubectl; a
/// test's cluster says where those two are, and has the rest.
pub trait Kubectl {
    /// The kubeconfig naming the cluster and its admin.
    fn kubeconfig(&self) -> &Path;

    /// The test's directory.
    fn dir(&self) -> &Path;

    /// `kubectl ARGS`, to be run by the caller.
    fn command(&self, args: &[&str]) -> Command {
        crate::kubectl_command(self.kubeconfig(), self.dir(), args)
    }

    /// kubectl ARGS: (succeeded, stdout, stderr).
    fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        crate::kubectl_in(self.kubeconfig(), self.dir(), args)
    }

    /// kubectl ARGS's stdout; panics if it failed.
    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args);
        assert!(ok, "kubectl {args:?} failed: {err}");
        out
    }

    /// kubectl ARGS's stderr; panics if it succeeded.
    fn refused(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args);
        assert!(!ok, "kubectl {args:?} succeeded: {out}");
        err
    }

    /// Writes `text` (a manifest) to `name` in the test's directory and
    /// returns its path.
    fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir().join(name);
        std::fs::write(&path, text).expect("write manifest");
        path.display().to_string()
    }

    /// `kubectl get WHAT -o json`, parsed.
    fn json(&self, what: &[&str]) -> Value {
        let mut args = vec!["get"];
        args.extend_from_slice(what);
        args.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.ok(&args)).expect("kubectl prints JSON")
    }
}
