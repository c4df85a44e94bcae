"""Every SQL statement of Quota Inbox: numbered migrations and named runtime queries."""
