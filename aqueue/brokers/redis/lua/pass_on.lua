-- KEYS: notify (QueueKeys.notify) -> 1
-- a cluster's claim hands a wake-up token back to a queue whose wait took it but whose
-- claim never ran
wake(KEYS[1])
return 1
