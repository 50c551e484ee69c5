#ifndef FIELDGATE_CPROTON_SHIM_H
#define FIELDGATE_CPROTON_SHIM_H
#include <proton/codec.h>
#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/connection_driver.h>
#include <proton/delivery.h>
#include <proton/disposition.h>
#include <proton/event.h>
#include <proton/link.h>
#include <proton/listener.h>
#include <proton/message.h>
#include <proton/netaddr.h>
#include <proton/proactor.h>
#include <proton/sasl.h>
#include <proton/sasl_plugin.h>
#include <proton/session.h>
#include <proton/ssl.h>
#include <proton/terminus.h>
#include <proton/transport.h>
#include <proton/types.h>

/* Macro constants import as Int32; typed copies compare cleanly with pn_delivery_remote_state's uint64_t. */
static const uint64_t cproton_received = PN_RECEIVED;
static const uint64_t cproton_accepted = PN_ACCEPTED;
static const uint64_t cproton_rejected = PN_REJECTED;
static const uint64_t cproton_released = PN_RELEASED;
static const uint64_t cproton_modified = PN_MODIFIED;
static const int cproton_eos = PN_EOS;
static const int cproton_overflow = PN_OVERFLOW;
#endif
