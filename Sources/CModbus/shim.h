#include <modbus/modbus.h>
#include <errno.h>

/* The error codes are macros over an enum, which Swift does not import: typed constants instead. */
static const int fg_modbus_errno_base = MODBUS_ENOBASE;
static const int fg_modbus_bad_crc = EMBBADCRC;
static const int fg_modbus_bad_data = EMBBADDATA;
static const int fg_modbus_bad_exception = EMBBADEXC;
static const int fg_modbus_unknown_exception = EMBUNKEXC;
static const int fg_modbus_too_much_data = EMBMDATA;
static const int fg_modbus_bad_slave = EMBBADSLAVE;
static const int fg_modbus_rtu_rs485 = MODBUS_RTU_RS485;

