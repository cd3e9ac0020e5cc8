//! [`ScopeCatalogue`]: the permissions the create form offers, each with a one-line description.

use crate::scopes::{InvalidScope, Scope};

/// One permission of the catalogue, as [`ScopeCatalogue::iter`] yields it: its scope and what it
/// lets a key do, so a person choosing permissions need not guess from the scope's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeInfo {
    /// The scope, e.g. `browser_sessions:create`.
    pub scope: Scope,
    /// One line a person reads beside the checkbox.
    pub description: String,
}

/// The permissions the dashboard offers when creating a key, in display order.
///
/// The form shows one checkbox per entry, labelled by the scope and its description; a submitted
/// scope outside the catalogue is refused. The default is the thirteen scopes of a browser- and
/// sandbox-sessions API; a host with other routes lists its own:
///
/// ```
/// use tower_api_key::dashboard::ScopeCatalogue;
///
/// let catalogue = ScopeCatalogue::empty()
///     .scope("reports:read", "Read reports")?
///     .scope("api_keys:manage", "Create, rotate and revoke API keys")?;
/// assert_eq!(catalogue.iter().count(), 2);
/// # Ok::<(), tower_api_key::InvalidScope>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeCatalogue {
    entries: Vec<ScopeInfo>,
}

/// The default catalogue: scope and description.
const DEFAULT_SCOPES: [(&str, &str); 13] = [
    (
        "browser_sessions:create",
        "Start new browser sessions (counts against the plan's concurrent sessions)",
    ),
    (
        "browser_sessions:read",
        "List browser sessions and read their status",
    ),
    (
        "browser_sessions:delete",
        "Stop and delete browser sessions",
    ),
    (
        "sandbox_sessions:create",
        "Start new sandbox sessions (counts against the plan's concurrent sessions)",
    ),
    (
        "sandbox_sessions:read",
        "List sandbox sessions and read their status",
    ),
    (
        "sandbox_sessions:delete",
        "Stop and delete sandbox sessions",
    ),
    (
        "sandbox_sessions:exec",
        "Run commands inside existing sandbox sessions",
    ),
    ("org:billing", "Read usage, invoices and billing details"),
    ("org:manage", "Change the organization's name and settings"),
    (
        "api_keys:manage",
        "Create, rotate and revoke API keys (and sign in to this dashboard)",
    ),
    ("members:invite", "Invite new members to the organization"),
    ("members:remove", "Remove members from the organization"),
    ("members:manage_roles", "Change the roles of members"),
];

impl Default for ScopeCatalogue {
    /// The thirteen scopes of browser sessions, sandbox sessions, the organization, API keys and
    /// members.
    fn default() -> Self {
        Self {
            entries: DEFAULT_SCOPES
                .iter()
                .map(|(scope, description)| ScopeInfo {
                    scope: Scope::from_static(scope),
                    description: (*description).to_owned(),
                })
                .collect(),
        }
    }
}

impl ScopeCatalogue {
    /// A catalogue with no scopes; add them with [`scope`](Self::scope).
    pub fn empty() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// Add `scope` with its one-line `description` (an existing entry for the scope is
    /// replaced). Fails if `scope` is not a valid scope.
    pub fn scope(
        mut self,
        scope: &str,
        description: impl Into<String>,
    ) -> Result<Self, InvalidScope> {
        let scope = Scope::new(scope)?;
        let info = ScopeInfo {
            scope,
            description: description.into(),
        };
        match self.entries.iter_mut().find(|e| e.scope == info.scope) {
            Some(existing) => *existing = info,
            None => self.entries.push(info),
        }
        Ok(self)
    }

    /// The entries, in display order.
    pub fn iter(&self) -> impl Iterator<Item = &ScopeInfo> {
        self.entries.iter()
    }

    /// The entry for `scope`, if the catalogue has it.
    pub fn get(&self, scope: &str) -> Option<&ScopeInfo> {
        self.entries.iter().find(|e| e.scope.as_str() == scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_catalogue_has_the_thirteen_scopes_each_described() {
        let catalogue = ScopeCatalogue::default();
        assert_eq!(catalogue.iter().count(), 13);
        assert!(catalogue.get("members:manage_roles").is_some());
        assert!(catalogue.iter().all(|e| !e.description.is_empty()));
    }

    #[test]
    fn adding_a_scope_twice_replaces_its_description() {
        let catalogue = ScopeCatalogue::empty()
            .scope("a:b", "first")
            .unwrap()
            .scope("a:b", "second")
            .unwrap();
        assert_eq!(catalogue.iter().count(), 1);
        assert_eq!(catalogue.get("a:b").unwrap().description, "second");
        assert!(ScopeCatalogue::empty().scope("Not A Scope", "x").is_err());
    }
}
