"""Notices to people: a work held for attention, a restored copy about to expire before its work
is archived, a failed run; sent by e-mail and to a webhook, once per event."""
