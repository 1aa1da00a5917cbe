-- The activity page lists a customer's recent events; the partitioned index is created on
-- every partition (existing and future). Not CONCURRENTLY: refinery runs this in a transaction,
-- and CREATE INDEX CONCURRENTLY is not supported on partitioned tables anyway.
CREATE INDEX events_customer_occurred_at_idx ON public.events (customer_id, occurred_at DESC);

-- Last seen per user, for the admin dashboard.
CREATE VIEW public.user_last_activity AS
    SELECT u.id AS user_id, u.customer_id, u.email, max(e.occurred_at) AS last_event_at
      FROM public.users u
      LEFT JOIN public.events e ON e.user_id = u.id
     GROUP BY u.id;
