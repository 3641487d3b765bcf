"""A coupon service that notifies users through a mail service, both over Kafka."""
