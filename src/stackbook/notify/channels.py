"""Channel kinds: which Apprise plugin serves a URL scheme, registered in one place.

Apprise finds a URL's plugin by importing all of its plugins (about 140 modules,
0.15 s here) the first time it is asked. A failed run must not wait for that, so
the kinds teams use for on-call messages are registered here with the one plugin
module that serves them (``register(ChannelKind(...))``) and only that module is
imported. A scheme registered nowhere still works: Apprise's own discovery takes
over (``https://`` native webhook URLs, any of its other services).

Registered kinds are checked against the installed Apprise by the tests (each
plugin exists and claims its schemes), so an Apprise upgrade that renames one
fails there, not during an incident.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChannelKind:
    schemes: tuple[str, ...]
    plugin: str  # "module:Class" of the Apprise plugin
    what: str  # for people: the README, `stackbook notify test`

    @property
    def module(self) -> str:
        return self.plugin.partition(":")[0]

    @property
    def cls(self) -> str:
        return self.plugin.partition(":")[2]


KINDS: dict[str, ChannelKind] = {}


def register(kind: ChannelKind) -> ChannelKind:
    for scheme in kind.schemes:
        if scheme in KINDS:
            raise ValueError(f"channel scheme {scheme}:// registered twice")
        KINDS[scheme] = kind
    return kind


register(ChannelKind(("json", "jsons"), "apprise.plugins.custom_json:NotifyJSON", "a generic JSON webhook"))
register(ChannelKind(("form", "forms"), "apprise.plugins.custom_form:NotifyForm", "a generic form-encoded webhook"))
register(ChannelKind(("mailto", "mailtos"), "apprise.plugins.email:NotifyEmail", "email over SMTP"))
register(ChannelKind(("slack",), "apprise.plugins.slack:NotifySlack", "Slack"))
register(ChannelKind(("workflow", "workflows"), "apprise.plugins.workflows:NotifyWorkflows",
                     "Microsoft Teams (Power Automate workflows)"))
register(ChannelKind(("pagerduty",), "apprise.plugins.pagerduty:NotifyPagerDuty", "PagerDuty"))
register(ChannelKind(("opsgenie",), "apprise.plugins.opsgenie:NotifyOpsgenie", "Opsgenie"))
register(ChannelKind(("mmost", "mmosts"), "apprise.plugins.mattermost:NotifyMattermost", "Mattermost"))
register(ChannelKind(("discord",), "apprise.plugins.discord:NotifyDiscord", "Discord"))
register(ChannelKind(("ntfy", "ntfys"), "apprise.plugins.ntfy:NotifyNtfy", "ntfy"))
register(ChannelKind(("gchat",), "apprise.plugins.google_chat:NotifyGoogleChat", "Google Chat"))


def kind(scheme: str) -> ChannelKind | None:
    return KINDS.get(scheme.lower())
