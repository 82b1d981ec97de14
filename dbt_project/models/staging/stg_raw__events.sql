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
    -- The first copy of an event by (partition, offset) counts; copies share the day.
    qualify row_number() over (partition by event_id order by kafka_partition, kafka_offset) = 1

)

select * from renamed
