"""The change feed behind ``Subscription.phoneNumberChanges``: pollers shared by subscribers,
coordinated across replicas through Redis, over the same pipeline as queries."""
