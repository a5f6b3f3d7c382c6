"""A small OpenID Connect issuer for the local stack and tests: people sign in without passwords."""
