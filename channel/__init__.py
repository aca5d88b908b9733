"""The secure channel between services (seed Workflow 5).

Only its configuration section lives here so far (:mod:`xpscerpto.channel.config`); the
handshake, certificates and transport come with the channel issue.
"""
