with

source as (

    select * from {{ source('raw', 'events') }}
    where {{ batch_days() }}
    {% if var('until') %}
        and occurred_at < cast('{{ checked_instant(var("until"), "vars.until") }}' as timestamptz)
    {% endif %}

),

renamed as (

    select
        event_id,
        event_type,
        user_id,
        cast(occurred_at as timestamptz) as occurred_at,
        cast(event_date as date) as event_date,
        cast(date_trunc('hour', occurred_at) as timestamp) as event_hour,
        country,
        cast(amount_cents as bigint) as amount_cents,
        kafka_partition,
        kafka_offset

    from source
    -- The first copy of an event by (partition, offset) counts. Copies share the key (so the
    -- partition) and occurred_at (so the hour): an event_id reused with another user's key or in
    -- another hour is another event, in both layers (the speed layer dedupes per partition and hour).
    qualify row_number() over (
        partition by event_id, kafka_partition, date_trunc('hour', occurred_at)
        order by kafka_offset
    ) = 1

)

select * from renamed
