#!/bin/sh
# Start one production broker (docker-compose.yml's kafka-$KAFKA_NODE_ID, image apache/kafka)
# secured.
#
# The image's own entrypoint formats the storage without SCRAM credentials, and a broker whose
# inter-broker listener wants SCRAM cannot even register without its own. So: write the config
# with the broker's password, format once with the broker's and the admin's credentials
# (`--add-scram`), then start. Every component's principal and ACLs are added afterwards by the
# admin (`carebus kafka apply`, the `kafka-access` setup service).
set -eu
umask 077
secrets=/run/secrets
home=/var/lib/kafka
config="$home/server.properties"
broker_password=$(cat "$secrets/kafka_password_broker")
admin_password=$(cat "$secrets/kafka_password_admin")
# Passwords are hex (`openssl rand -hex 24`): nothing sed, the JAAS line or --add-scram would
# read as syntax.
case "$broker_password$admin_password" in
  *[!0-9a-fA-F]*|"") echo "kafka_password_broker and kafka_password_admin must be hex" >&2; exit 1 ;;
esac
case "${KAFKA_NODE_ID:-}" in
  1|2|3) ;;
  *) echo "KAFKA_NODE_ID must be 1, 2 or 3 (the node's kafka-N)" >&2; exit 1 ;;
esac
sed -e "s/@BROKER_PASSWORD@/$broker_password/" -e "s/@NODE_ID@/$KAFKA_NODE_ID/g" \
  /opt/carebus/kafka/server.properties > "$config"

# The admin's client settings for the healthcheck and for operators' `docker-compose exec`.
cat > "$home/admin.properties" <<PROPERTIES
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin_password";
ssl.truststore.type=PEM
ssl.truststore.location=$secrets/kafka_ca_pem
PROPERTIES

if [ ! -f "$home/data/meta.properties" ]; then
  # Static voters (controller.quorum.voters): no --standalone; every node the same cluster id.
  /opt/kafka/bin/kafka-storage.sh format -t "$CLUSTER_ID" -c "$config" \
    --add-scram "SCRAM-SHA-512=[name=broker,password=$broker_password]" \
    --add-scram "SCRAM-SHA-512=[name=admin,password=$admin_password]"
fi
exec /opt/kafka/bin/kafka-server-start.sh "$config"
