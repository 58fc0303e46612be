//! Normalisation rules: which (vendor, product, edition) a `package` CI is.
//!
//! A rule matches a package by a case-insensitive glob on its name (`*`, `?`) and, when
//! given, a glob on the package's own `vendor` attribute. The first matching rule wins:
//! the operator's rules (API `PUT /api/v1/licenses/rules` or `[licenses] rules_file`) come
//! before the built-in ones ([`builtin_rules`]), and within each set the order given.
//! Editions are rules of their own placed before the generic rule of the product
//! (`mssql-server-enterprise*` before `mssql-server*`), so an edition is set only where
//! the package name says it.
//!
//! A package that no rule matches is still inventoried under its own name, with the
//! package's `vendor` attribute (or `unknown`) and no edition, and is never licensable.
//! Matching is linear in the number of rules, each glob linear-time
//! ([`crate::selector::Glob`]); nothing here panics on any input.

use serde::{Deserialize, Serialize};

use crate::selector::Glob;

use super::entitlements::Metric;

/// Most operator rules accepted.
pub const MAX_RULES: usize = 2_000;
/// Longest pattern or name in a rule.
pub const MAX_RULE_FIELD: usize = 256;

/// One normalisation rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Glob on the package name (case-insensitive), e.g. `oracle-java*`.
    pub package: String,
    /// Optional glob on the package's `vendor` attribute (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_vendor: Option<String>,
    pub vendor: String,
    pub product: String,
    #[serde(default)]
    pub edition: String,
    /// Whether the product is sold under licence: licensable products without an
    /// entitlement show as `unlicensed` in the position.
    #[serde(default)]
    pub licensable: bool,
    /// The metric the position uses when no entitlement says otherwise.
    #[serde(default)]
    pub metric: Metric,
}

/// The rules document of the API and of `rules_file`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
}

/// A rule set that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidRules {
    /// More rules than [`MAX_RULES`].
    #[error("{0} rules; at most {MAX_RULES} are accepted")]
    TooMany(usize),
    /// A required field is empty or a field is too long.
    #[error("rule {index}: {field} {reason}")]
    Field {
        index: usize,
        field: &'static str,
        reason: &'static str,
    },
}

impl RuleSet {
    /// Checks bounds and required fields; `index` is 1-based.
    pub fn validate(&self) -> Result<(), InvalidRules> {
        if self.rules.len() > MAX_RULES {
            return Err(InvalidRules::TooMany(self.rules.len()));
        }
        for (i, r) in self.rules.iter().enumerate() {
            let index = i + 1;
            for (field, v, required) in [
                ("package", r.package.as_str(), true),
                ("vendor", r.vendor.as_str(), true),
                ("product", r.product.as_str(), true),
                ("edition", r.edition.as_str(), false),
                (
                    "package_vendor",
                    r.package_vendor.as_deref().unwrap_or(""),
                    false,
                ),
            ] {
                if required && v.trim().is_empty() {
                    return Err(InvalidRules::Field {
                        index,
                        field,
                        reason: "is empty",
                    });
                }
                if v.len() > MAX_RULE_FIELD {
                    return Err(InvalidRules::Field {
                        index,
                        field,
                        reason: "is longer than 256 bytes",
                    });
                }
            }
        }
        Ok(())
    }
}

/// What a package normalises to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Product {
    pub vendor: String,
    pub product: String,
    pub edition: String,
}

/// The verdict for one package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Normalised {
    pub product: Product,
    /// A rule matched (false: the package's own name and vendor).
    pub matched: bool,
    pub licensable: bool,
    pub metric: Metric,
}

struct Compiled {
    package: Glob,
    package_vendor: Option<Glob>,
    rule: Rule,
}

/// Operator rules followed by (optionally) the built-ins, compiled for matching.
pub struct Normaliser {
    rules: Vec<Compiled>,
}

impl Normaliser {
    pub fn new(custom: &RuleSet, with_builtins: bool) -> Self {
        let builtins = if with_builtins {
            builtin_rules().rules
        } else {
            Vec::new()
        };
        let rules = custom
            .rules
            .iter()
            .cloned()
            .chain(builtins)
            .map(|rule| Compiled {
                package: Glob::new(rule.package.to_lowercase()),
                package_vendor: rule
                    .package_vendor
                    .as_ref()
                    .map(|v| Glob::new(v.to_lowercase())),
                rule,
            })
            .collect();
        Normaliser { rules }
    }

    /// The product of a package named `name` whose manager recorded `vendor`.
    pub fn normalise(&self, name: &str, vendor: Option<&str>) -> Normalised {
        let lname = name.to_lowercase();
        let lvendor = vendor.map(str::to_lowercase);
        for c in &self.rules {
            if !c.package.matches(&lname) {
                continue;
            }
            if let Some(pv) = &c.package_vendor {
                match &lvendor {
                    Some(v) if pv.matches(v) => {}
                    _ => continue,
                }
            }
            return Normalised {
                product: Product {
                    vendor: c.rule.vendor.clone(),
                    product: c.rule.product.clone(),
                    edition: c.rule.edition.clone(),
                },
                matched: true,
                licensable: c.rule.licensable,
                metric: c.rule.metric,
            };
        }
        Normalised {
            product: Product {
                vendor: vendor
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .unwrap_or("unknown")
                    .to_owned(),
                product: name.to_owned(),
                edition: String::new(),
            },
            matched: false,
            licensable: false,
            metric: Metric::PerInstall,
        }
    }
}

/// The built-in rules for common software, editions first. Commercial products are
/// `licensable`; free ones are normalised (so the inventory groups them) but not.
pub fn builtin_rules() -> RuleSet {
    use Metric::{PerCore, PerHost, PerInstall, PerUser};
    // (package glob, vendor, product, edition, licensable, metric)
    const B: &[(&str, &str, &str, &str, bool, Metric)] = &[
        // Oracle
        ("oracle-java*", "Oracle", "Java SE", "", true, PerCore),
        ("jdk1.*", "Oracle", "Java SE", "", true, PerCore),
        ("jdk-*", "Oracle", "Java SE", "", true, PerCore),
        ("jre1.*", "Oracle", "Java SE", "", true, PerCore),
        (
            "oracle-database-ee*",
            "Oracle",
            "Database",
            "Enterprise",
            true,
            PerCore,
        ),
        (
            "oracle-database-xe*",
            "Oracle",
            "Database",
            "Express",
            false,
            PerHost,
        ),
        (
            "oracle-instantclient*",
            "Oracle",
            "Instant Client",
            "",
            false,
            PerInstall,
        ),
        ("virtualbox*", "Oracle", "VirtualBox", "", false, PerInstall),
        // Microsoft
        (
            "mssql-server-enterprise*",
            "Microsoft",
            "SQL Server",
            "Enterprise",
            true,
            PerCore,
        ),
        (
            "mssql-server-standard*",
            "Microsoft",
            "SQL Server",
            "Standard",
            true,
            PerCore,
        ),
        (
            "mssql-server-developer*",
            "Microsoft",
            "SQL Server",
            "Developer",
            false,
            PerCore,
        ),
        (
            "mssql-server-express*",
            "Microsoft",
            "SQL Server",
            "Express",
            false,
            PerCore,
        ),
        (
            "mssql-server*",
            "Microsoft",
            "SQL Server",
            "",
            true,
            PerCore,
        ),
        (
            "mssql-tools*",
            "Microsoft",
            "SQL Server Tools",
            "",
            false,
            PerInstall,
        ),
        (
            "msodbcsql*",
            "Microsoft",
            "ODBC Driver for SQL Server",
            "",
            false,
            PerInstall,
        ),
        (
            "powershell-preview",
            "Microsoft",
            "PowerShell",
            "Preview",
            false,
            PerInstall,
        ),
        (
            "powershell*",
            "Microsoft",
            "PowerShell",
            "",
            false,
            PerInstall,
        ),
        (
            "code-insiders",
            "Microsoft",
            "Visual Studio Code",
            "Insiders",
            false,
            PerInstall,
        ),
        (
            "code",
            "Microsoft",
            "Visual Studio Code",
            "",
            false,
            PerInstall,
        ),
        ("teams-for-linux", "Microsoft", "Teams", "", true, PerUser),
        ("teams", "Microsoft", "Teams", "", true, PerUser),
        (
            "microsoft-edge-beta",
            "Microsoft",
            "Edge",
            "Beta",
            false,
            PerInstall,
        ),
        (
            "microsoft-edge-dev",
            "Microsoft",
            "Edge",
            "Dev",
            false,
            PerInstall,
        ),
        (
            "microsoft-edge*",
            "Microsoft",
            "Edge",
            "",
            false,
            PerInstall,
        ),
        (
            "mdatp",
            "Microsoft",
            "Defender for Endpoint",
            "",
            true,
            PerHost,
        ),
        ("intune-portal", "Microsoft", "Intune", "", true, PerUser),
        ("dotnet-*", "Microsoft", ".NET", "", false, PerInstall),
        // Google
        (
            "google-chrome-beta",
            "Google",
            "Chrome",
            "Beta",
            false,
            PerInstall,
        ),
        (
            "google-chrome-unstable",
            "Google",
            "Chrome",
            "Dev",
            false,
            PerInstall,
        ),
        ("google-chrome*", "Google", "Chrome", "", false, PerInstall),
        // Collaboration and remote access
        ("zoom", "Zoom", "Zoom Workplace", "", true, PerUser),
        ("slack-desktop", "Slack", "Slack", "", true, PerUser),
        ("slack", "Slack", "Slack", "", true, PerUser),
        (
            "teamviewer-host",
            "TeamViewer",
            "TeamViewer",
            "Host",
            true,
            PerHost,
        ),
        ("teamviewer*", "TeamViewer", "TeamViewer", "", true, PerHost),
        ("anydesk", "AnyDesk", "AnyDesk", "", true, PerHost),
        ("icaclient", "Citrix", "Workspace app", "", true, PerUser),
        ("ctxusb", "Citrix", "Workspace app", "", true, PerUser),
        (
            "citrix-*",
            "Citrix",
            "Virtual Apps and Desktops",
            "",
            true,
            PerUser,
        ),
        ("xenserver-*", "Citrix", "XenServer", "", true, PerHost),
        // Containers and databases
        (
            "docker-ee*",
            "Docker",
            "Docker Engine",
            "Enterprise",
            true,
            PerHost,
        ),
        (
            "docker-ce*",
            "Docker",
            "Docker Engine",
            "Community",
            false,
            PerHost,
        ),
        (
            "docker.io",
            "Docker",
            "Docker Engine",
            "Community",
            false,
            PerHost,
        ),
        (
            "docker-desktop",
            "Docker",
            "Docker Desktop",
            "",
            true,
            PerUser,
        ),
        (
            "mongodb-enterprise*",
            "MongoDB",
            "MongoDB",
            "Enterprise",
            true,
            PerCore,
        ),
        (
            "mongodb-org*",
            "MongoDB",
            "MongoDB",
            "Community",
            false,
            PerHost,
        ),
        (
            "mongodb*",
            "MongoDB",
            "MongoDB",
            "Community",
            false,
            PerHost,
        ),
        (
            "elasticsearch",
            "Elastic",
            "Elasticsearch",
            "",
            true,
            PerHost,
        ),
        ("kibana", "Elastic", "Kibana", "", true, PerHost),
        ("logstash", "Elastic", "Logstash", "", true, PerHost),
        ("filebeat", "Elastic", "Beats", "", false, PerHost),
        ("metricbeat", "Elastic", "Beats", "", false, PerHost),
        (
            "elastic-agent",
            "Elastic",
            "Elastic Agent",
            "",
            true,
            PerHost,
        ),
        (
            "redis-enterprise*",
            "Redis",
            "Redis",
            "Enterprise",
            true,
            PerCore,
        ),
        ("redis-server", "Redis", "Redis", "", false, PerHost),
        ("redis", "Redis", "Redis", "", false, PerHost),
        (
            "postgresql-*",
            "PostgreSQL",
            "PostgreSQL",
            "",
            false,
            PerHost,
        ),
        (
            "postgresql*-server",
            "PostgreSQL",
            "PostgreSQL",
            "",
            false,
            PerHost,
        ),
        ("postgresql", "PostgreSQL", "PostgreSQL", "", false, PerHost),
        (
            "mysql-server*",
            "Oracle",
            "MySQL",
            "Community",
            false,
            PerHost,
        ),
        (
            "mysql-community-server*",
            "Oracle",
            "MySQL",
            "Community",
            false,
            PerHost,
        ),
        (
            "mysql-commercial-server*",
            "Oracle",
            "MySQL",
            "Enterprise",
            true,
            PerHost,
        ),
        ("mariadb-server*", "MariaDB", "MariaDB", "", false, PerHost),
        (
            "mariadb-enterprise*",
            "MariaDB",
            "MariaDB",
            "Enterprise",
            true,
            PerCore,
        ),
        // VMware, Adobe, JetBrains, Atlassian
        ("open-vm-tools*", "VMware", "Tools", "Open", false, PerHost),
        ("vmware-tools*", "VMware", "Tools", "", false, PerHost),
        (
            "vmware-horizon-client",
            "VMware",
            "Horizon Client",
            "",
            true,
            PerUser,
        ),
        (
            "vmware-workstation*",
            "VMware",
            "Workstation",
            "",
            true,
            PerInstall,
        ),
        (
            "adobereader*",
            "Adobe",
            "Acrobat Reader",
            "",
            false,
            PerInstall,
        ),
        ("acroread", "Adobe", "Acrobat Reader", "", false, PerInstall),
        (
            "intellij-idea-ultimate*",
            "JetBrains",
            "IntelliJ IDEA",
            "Ultimate",
            true,
            PerUser,
        ),
        (
            "intellij-idea-community*",
            "JetBrains",
            "IntelliJ IDEA",
            "Community",
            false,
            PerUser,
        ),
        (
            "pycharm-professional*",
            "JetBrains",
            "PyCharm",
            "Professional",
            true,
            PerUser,
        ),
        (
            "pycharm-community*",
            "JetBrains",
            "PyCharm",
            "Community",
            false,
            PerUser,
        ),
        ("clion*", "JetBrains", "CLion", "", true, PerUser),
        ("goland*", "JetBrains", "GoLand", "", true, PerUser),
        ("webstorm*", "JetBrains", "WebStorm", "", true, PerUser),
        ("datagrip*", "JetBrains", "DataGrip", "", true, PerUser),
        ("rider*", "JetBrains", "Rider", "", true, PerUser),
        (
            "jetbrains-toolbox",
            "JetBrains",
            "Toolbox",
            "",
            false,
            PerUser,
        ),
        ("atlassian-jira*", "Atlassian", "Jira", "", true, PerUser),
        (
            "jira-software*",
            "Atlassian",
            "Jira",
            "Software",
            true,
            PerUser,
        ),
        (
            "atlassian-confluence*",
            "Atlassian",
            "Confluence",
            "",
            true,
            PerUser,
        ),
        (
            "atlassian-bitbucket*",
            "Atlassian",
            "Bitbucket",
            "",
            true,
            PerUser,
        ),
        ("bamboo*", "Atlassian", "Bamboo", "", true, PerHost),
        // Red Hat and Canonical
        (
            "redhat-release*",
            "Red Hat",
            "Enterprise Linux",
            "",
            true,
            PerHost,
        ),
        (
            "rhel-release*",
            "Red Hat",
            "Enterprise Linux",
            "",
            true,
            PerHost,
        ),
        (
            "subscription-manager",
            "Red Hat",
            "Subscription Manager",
            "",
            false,
            PerHost,
        ),
        ("insights-client", "Red Hat", "Insights", "", false, PerHost),
        ("satellite*", "Red Hat", "Satellite", "", true, PerHost),
        ("ansible-core", "Red Hat", "Ansible", "Core", false, PerHost),
        (
            "ansible-automation-platform*",
            "Red Hat",
            "Ansible Automation Platform",
            "",
            true,
            PerHost,
        ),
        (
            "ubuntu-advantage-tools",
            "Canonical",
            "Ubuntu Pro",
            "",
            true,
            PerHost,
        ),
        (
            "ubuntu-pro-client",
            "Canonical",
            "Ubuntu Pro",
            "",
            true,
            PerHost,
        ),
        (
            "landscape-client",
            "Canonical",
            "Landscape",
            "",
            true,
            PerHost,
        ),
        ("livepatch*", "Canonical", "Livepatch", "", true, PerHost),
        (
            "canonical-livepatch",
            "Canonical",
            "Livepatch",
            "",
            true,
            PerHost,
        ),
        ("snapd", "Canonical", "snapd", "", false, PerInstall),
    ];
    RuleSet {
        rules: B
            .iter()
            .map(
                |(package, vendor, product, edition, licensable, metric)| Rule {
                    package: (*package).to_owned(),
                    package_vendor: None,
                    vendor: (*vendor).to_owned(),
                    product: (*product).to_owned(),
                    edition: (*edition).to_owned(),
                    licensable: *licensable,
                    metric: *metric,
                },
            )
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn n(name: &str) -> Normalised {
        Normaliser::new(&RuleSet::default(), true).normalise(name, None)
    }

    #[test]
    fn builtins_name_vendor_product_and_edition() {
        let ms = n("mssql-server-enterprise");
        assert_eq!(ms.product.vendor, "Microsoft");
        assert_eq!(ms.product.product, "SQL Server");
        assert_eq!(ms.product.edition, "Enterprise");
        assert!(ms.licensable);
        assert_eq!(n("mssql-server").product.edition, "");
        assert_eq!(n("Google-Chrome-Stable").product.product, "Chrome");
        assert_eq!(n("docker-ce").product.edition, "Community");
        assert_eq!(n("postgresql-15").product.product, "PostgreSQL");
        assert_eq!(n("teamviewer").metric, Metric::PerHost);
        assert_eq!(n("intellij-idea-ultimate").product.edition, "Ultimate");
    }

    #[test]
    fn unmatched_keeps_name_and_vendor() {
        let nz = Normaliser::new(&RuleSet::default(), true);
        let v = nz.normalise("bash", Some("Debian"));
        assert!(!v.matched);
        assert_eq!(v.product.vendor, "Debian");
        assert_eq!(v.product.product, "bash");
        assert_eq!(nz.normalise("x", None).product.vendor, "unknown");
    }

    #[test]
    fn custom_rules_come_first_and_may_check_the_vendor() {
        let custom = RuleSet {
            rules: vec![Rule {
                package: "code".into(),
                package_vendor: Some("acme*".into()),
                vendor: "Acme".into(),
                product: "Code".into(),
                edition: String::new(),
                licensable: true,
                metric: Metric::PerUser,
            }],
        };
        let nz = Normaliser::new(&custom, true);
        assert_eq!(
            nz.normalise("code", Some("ACME Corp")).product.vendor,
            "Acme"
        );
        assert_eq!(
            nz.normalise("code", Some("Microsoft")).product.vendor,
            "Microsoft"
        );
        let none = Normaliser::new(&custom, false);
        assert!(!none.normalise("google-chrome-stable", None).matched);
    }

    #[test]
    fn validation_names_the_rule() {
        let mut set = builtin_rules();
        assert!(set.validate().is_ok());
        set.rules[3].product = " ".into();
        assert_eq!(
            set.validate(),
            Err(InvalidRules::Field {
                index: 4,
                field: "product",
                reason: "is empty"
            })
        );
    }
}
